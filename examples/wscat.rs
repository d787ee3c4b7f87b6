//! A small WebSocket client for trying portico (README: A five-minute tour): connects to the
//! URL, sends each line of standard input as a text message and prints every message back.
//!
//!     echo hi | cargo run -q --example wscat -- ws://localhost:8080/ws/
//!     cargo run -q --example wscat -- ws://localhost:8080/ws/ 'Authorization: Bearer TOKEN'

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let Some(url) = args.next() else {
        eprintln!("usage: wscat ws://HOST:PORT/PATH ['Header: value' ...]");
        std::process::exit(2);
    };
    let mut request = match url.as_str().into_client_request() {
        Ok(r) => r,
        Err(e) => fail(&format!("{url}: {e}")),
    };
    for header in args {
        let Some((name, value)) = header.split_once(':') else {
            fail(&format!("{header:?}: expected 'Name: value'"));
        };
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.trim().as_bytes()),
            http::HeaderValue::from_str(value.trim()),
        ) else {
            fail(&format!("{header:?}: not a valid header"));
        };
        request.headers_mut().append(name, value);
    }
    let (ws, response) = match tokio_tungstenite::connect_async(request).await {
        Ok(pair) => pair,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => fail(&format!(
            "refused: {} {}",
            r.status(),
            String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).trim()
        )),
        Err(e) => fail(&e.to_string()),
    };
    eprintln!("connected: {}", response.status());
    let (mut tx, mut rx) = ws.split();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut open = true;
    loop {
        tokio::select! {
            line = lines.next_line(), if open => match line {
                Ok(Some(line)) => {
                    if tx.send(Message::text(line)).await.is_err() {
                        break;
                    }
                }
                // End of input: close, and print what is still coming.
                _ => {
                    open = false;
                    let _ = tx.send(Message::Close(None)).await;
                }
            },
            message = rx.next() => match message {
                Some(Ok(Message::Text(t))) => println!("{t}"),
                Some(Ok(Message::Binary(b))) => println!("({} bytes)", b.len()),
                Some(Ok(Message::Close(frame))) => {
                    if let Some(f) = frame {
                        eprintln!("closed: {} {}", f.code, f.reason);
                    }
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => fail(&e.to_string()),
                None => break,
            },
        }
    }
}

fn fail(why: &str) -> ! {
    eprintln!("wscat: {why}");
    std::process::exit(1);
}
