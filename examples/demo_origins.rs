//! The demo origins behind `make run`: an HTTP origin on 127.0.0.1:3001 and 127.0.0.1:3002,
//! a WebSocket echo origin on 127.0.0.1:3003 (the peers of conf/portico.yaml).

#[path = "../tests/integration/origins.rs"]
mod origins;

#[tokio::main]
async fn main() {
    let a = origins::HttpOrigin::start_on("demo-a", "127.0.0.1:3001".parse().unwrap()).await;
    let b = origins::HttpOrigin::start_on("demo-b", "127.0.0.1:3002".parse().unwrap()).await;
    let ws = origins::WsOrigin::start_on("demo-ws", "127.0.0.1:3003".parse().unwrap()).await;
    println!(
        "demo origins: http {} and {}, websocket echo {}",
        a.addr, b.addr, ws.addr
    );
    tokio::signal::ctrl_c().await.ok();
}
