//! Zero downtime: SIGHUP reloads and binary upgrades under continuous load, SIGTERM drains,
//! SIGINT exits fast.

use crate::harness::*;
use crate::origins::{HttpOrigin, WsOrigin};
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

fn two_groups(
    http: &str,
    ws: &str,
    a: &HttpOrigin,
    b: &HttpOrigin,
    wa: &WsOrigin,
    wb: &WsOrigin,
) -> String {
    format!(
        "upstreams:\n  one: {{peers: ['{}']}}\n  two: {{peers: ['{}']}}\n  ws-one: {{peers: ['{}']}}\n  ws-two: {{peers: ['{}']}}\nroutes:\n  - {{path_prefix: /ws/, upstream: {ws}}}\n  - {{path_prefix: /, upstream: {http}}}\n",
        a.addr, b.addr, wa.addr, wb.addr
    )
}

/// Ten reloads that move the HTTP and WebSocket routes between groups, under continuous load:
/// no request fails, every request sent after a reload took effect is answered by the group
/// that config names, and 100 WebSockets opened before the reloads still echo after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_lose_nothing() {
    let (a, b) = (
        HttpOrigin::start("one").await,
        HttpOrigin::start("two").await,
    );
    let (wa, wb) = (
        WsOrigin::start("ws-one").await,
        WsOrigin::start("ws-two").await,
    );
    let mut proxy = Proxy::start(&two_groups("one", "ws-one", &a, &b, &wa, &wb)).await;
    let mut sockets = Vec::new();
    for _ in 0..100 {
        sockets.push(ws_connect(proxy.addr, "/ws/", &[]).await.unwrap().0);
    }
    let load = Load::start(proxy.addr, 4, "/");
    // (group in force, from when the test saw it, until the next HUP was sent)
    let mut phases: Vec<(&str, Instant, Instant)> = Vec::new();
    for i in 0..10 {
        let (http, ws) = if i % 2 == 0 {
            ("two", "ws-two")
        } else {
            ("one", "ws-one")
        };
        proxy.rewrite(&two_groups(http, ws, &a, &b, &wa, &wb));
        let hup = Instant::now();
        if let Some(last) = phases.last_mut() {
            last.2 = hup;
        }
        proxy.signal("HUP");
        eventually("the reload takes effect", || async {
            get(proxy.addr, "/", &[]).await.origin() == http
        })
        .await;
        phases.push((
            http,
            Instant::now(),
            Instant::now() + Duration::from_secs(3600),
        ));
        tokio::time::sleep(Duration::from_millis(150)).await; // let the load run on this config
    }
    let samples = load.stop().await;
    assert_no_failures(&samples);
    let mut checked = 0;
    for (group, from, until) in &phases {
        for s in samples.iter().filter(|s| s.start > *from && s.end < *until) {
            assert_eq!(
                s.outcome.as_deref(),
                Ok(*group),
                "a request sent after the reload was answered by the old group"
            );
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} requests fell inside a phase");
    assert_eq!(proxy.logs().matches("configuration reloaded").count(), 10);
    for (i, ws) in sockets.iter_mut().enumerate() {
        let text = format!("still {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let echo = tokio::time::timeout(IO_TIMEOUT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echo, Message::text(text));
    }
    assert!(proxy.is_running());
    eprintln!(
        "reloads under load: {} requests, 0 failed, {checked} checked against their phase",
        samples.len()
    );
}

/// `portico -u` takes the sockets over under continuous load: no request fails, no connection
/// is refused, the old process exits after draining, the new one serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_upgrade_under_load_loses_nothing() {
    let origin = HttpOrigin::start("a").await;
    let mut proxy = Proxy::start(&one_route(origin.addr)).await;
    let old_pid = proxy.pid();
    let load = Load::start(proxy.addr, 4, "/");
    tokio::time::sleep(Duration::from_millis(300)).await; // load on the old process alone
    let status = proxy.upgrade().await;
    assert!(status.success(), "the old process exited with {status}");
    tokio::time::sleep(Duration::from_millis(300)).await; // load on the new process alone
    let samples = load.stop().await;
    let resets = assert_handoff_failures(&samples);
    assert!(samples.len() > 100, "only {} requests", samples.len());
    assert_ne!(proxy.pid(), old_pid);
    assert!(
        proxy
            .logs()
            .contains(&format!("sent SIGQUIT to the old process {old_pid}")),
        "{}",
        proxy.logs()
    );
    assert_eq!(
        pid_in(&proxy),
        Some(proxy.pid()),
        "the pid file names the new process"
    );
    assert_eq!(get(proxy.addr, "/", &[]).await.status, 200);
    eprintln!(
        "binary upgrade under load: {} requests, {resets} reset at the hand-off",
        samples.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_in_flight_complete() {
    let origin = HttpOrigin::start("a").await;
    let mut proxy = Proxy::start(&one_route(origin.addr)).await;
    let addr = proxy.addr;
    let slow: Vec<_> = (0..5)
        .map(|_| tokio::spawn(async move { try_get(addr, "/slow/700").await }))
        .collect();
    eventually("the slow requests reach the origin", || async {
        origin.hits() == 5
    })
    .await;
    proxy.signal("TERM");
    for r in slow {
        let r = r
            .await
            .unwrap()
            .expect("a request in flight failed on SIGTERM");
        assert_eq!(r.status, 200);
    }
    // grace_period 1s + graceful_shutdown_timeout 1s in the harness config.
    let status = proxy
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("did not exit after SIGTERM");
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_fast() {
    let origin = HttpOrigin::start("a").await;
    let mut proxy = Proxy::start(&one_route(origin.addr)).await;
    let addr = proxy.addr;
    let _slow = tokio::spawn(async move { try_get(addr, "/slow/5000").await });
    eventually("the slow request reaches the origin", || async {
        origin.hits() == 1
    })
    .await;
    let started = Instant::now();
    proxy.signal("INT");
    proxy
        .wait_exit(Duration::from_secs(2))
        .await
        .expect("did not exit fast on SIGINT");
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// Kills a process this test started indirectly (the daemonized new portico), by its pid.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg(self.0.to_string())
            .status();
    }
}

/// The command shipped in deploy/ does the whole hand-off under load, with no failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_upgrade_command_hands_over_under_load() {
    let origin = HttpOrigin::start("a").await;
    let mut proxy = Proxy::start(&one_route(origin.addr)).await;
    let old_pid = proxy.pid();
    let load = Load::start(proxy.addr, 2, "/");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/portico-upgrade");
    let mut upgrade = std::process::Command::new(script)
        .args(["-b", BIN, "-c", proxy.conf.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    // Reap the old proxy (our child) as it exits, or the script's `kill -0` sees a zombie.
    let status = loop {
        proxy.is_running();
        if let Some(status) = upgrade.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the upgrade command did not finish in 30s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let out = upgrade.wait_with_output().unwrap();
    let new_pid = pid_in(&proxy).expect("a pid file naming the new process");
    let _new = KillOnDrop(new_pid);
    assert!(
        status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("portico upgraded: pid {old_pid} -> {new_pid}")
    );
    tokio::time::sleep(Duration::from_millis(300)).await; // load on the new process alone
    let samples = load.stop().await;
    let resets = assert_handoff_failures(&samples);
    assert_eq!(get(proxy.addr, "/", &[]).await.status, 200);
    eprintln!(
        "upgrade command under load: {} requests, {resets} reset at the hand-off",
        samples.len()
    );
}

fn pid_in(proxy: &Proxy) -> Option<u32> {
    std::fs::read_to_string(proxy.dir.path().join("portico.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn children_of(pid: u32) -> String {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .map(|t| std::fs::read_to_string(t.unwrap().path().join("children")).unwrap_or_default())
        .collect()
}

/// SIGUSR2 (the systemd way): the running process starts its own successor, which takes the
/// sockets over under load; no request fails and the pid file names the new process, a child
/// of the old one (so it stays in the service's cgroup), before the old one exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_starts_a_successor_that_takes_over_under_load() {
    let origin = HttpOrigin::start("a").await;
    let mut proxy = Proxy::start(&one_route(origin.addr)).await;
    let old_pid = proxy.pid();
    let load = Load::start(proxy.addr, 4, "/");
    tokio::time::sleep(Duration::from_millis(300)).await; // load on the old process alone
    proxy.signal("USR2");
    let mut adopted = None;
    eventually("the pid file names the successor", || {
        let new = pid_in(&proxy).filter(|p| *p != old_pid);
        if let Some(new) = new {
            // Checked while the old process still runs: the successor is its child.
            adopted.get_or_insert(
                children_of(old_pid)
                    .split_whitespace()
                    .any(|c| c == new.to_string()),
            );
        }
        async move { new.is_some() }
    })
    .await;
    let new_pid = pid_in(&proxy).unwrap();
    let _new = KillOnDrop(new_pid);
    assert_eq!(
        adopted,
        Some(true),
        "the successor {new_pid} is not a child of {old_pid}"
    );
    let status = proxy
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("the old process did not exit after the hand-off");
    assert!(status.success(), "the old process exited with {status}");
    tokio::time::sleep(Duration::from_millis(300)).await; // load on the new process alone
    let samples = load.stop().await;
    let resets = assert_handoff_failures(&samples);
    assert!(samples.len() > 100, "only {} requests", samples.len());
    let logs = proxy.logs();
    assert!(
        logs.contains(&format!("started the successor {BIN} as pid {new_pid}")),
        "{logs}"
    );
    assert!(
        logs.contains(&format!("sent SIGQUIT to the old process {old_pid}")),
        "{logs}"
    );
    assert_eq!(get(proxy.addr, "/", &[]).await.status, 200);
    assert_eq!(
        pid_in(&proxy),
        Some(new_pid),
        "the old process left the pid file alone"
    );
    eprintln!(
        "SIGUSR2 upgrade under load: {} requests, {resets} reset at the hand-off",
        samples.len()
    );
}

/// A successor that cannot start (the file on disk is now invalid) exits; the old process
/// says so, reaps it, keeps serving, and a later SIGUSR2 with a good file upgrades.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_successor_leaves_the_old_process_serving() {
    let origin = HttpOrigin::start("a").await;
    let body = one_route(origin.addr);
    let mut proxy = Proxy::start(&body).await;
    let old_pid = proxy.pid();
    proxy.rewrite("routes: [{upstream: missing}]\n");
    proxy.signal("USR2");
    proxy.wait_for_log("upgrade failed: the successor").await;
    assert!(proxy.logs().contains("exit status: 64"), "{}", proxy.logs());
    eventually("the failed successor is reaped", || {
        let none = children_of(old_pid).trim().is_empty();
        async move { none }
    })
    .await;
    assert!(proxy.is_running());
    assert_eq!(pid_in(&proxy), Some(old_pid));
    assert_eq!(get(proxy.addr, "/", &[]).await.status, 200);

    proxy.rewrite(&body);
    proxy.signal("USR2");
    let status = proxy
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("the second SIGUSR2 did not hand over");
    let new_pid = pid_in(&proxy).expect("a pid file");
    let _new = KillOnDrop(new_pid);
    assert!(status.success());
    assert_ne!(new_pid, old_pid);
    assert_eq!(get(proxy.addr, "/", &[]).await.status, 200);
}

/// A daemon keeps its working directory: a relative `-c` and relative paths in the file still
/// mean the same on SIGHUP (a daemon's chdir to / used to break the reload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_with_relative_paths_reloads() {
    let a = HttpOrigin::start("a").await;
    let b = HttpOrigin::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let addr = proxy_addr();
    let conf = |origin: std::net::SocketAddr| {
        format!(
            "server: {{threads: 1, pid_file: portico.pid, upgrade_sock: upgrade.sock, grace_period: 1s, graceful_shutdown_timeout: 1s}}\nlisteners:\n  - address: '{addr}'\nupstreams:\n  app: {{peers: ['{origin}']}}\nroutes:\n  - {{upstream: app}}\n"
        )
    };
    std::fs::write(dir.path().join("portico.yaml"), conf(a.addr)).unwrap();
    let status = std::process::Command::new(BIN)
        .args(["-d", "-c", "portico.yaml"])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let pid_path = dir.path().join("portico.pid");
    eventually("the daemon writes its pid file", || {
        let ok = pid_path.exists();
        async move { ok }
    })
    .await;
    let pid: u32 = std::fs::read_to_string(&pid_path)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _daemon = KillOnDrop(pid);
    eventually("the daemon serves a", || async move {
        try_get(addr, "/").await.is_ok_and(|r| r.origin() == "a")
    })
    .await;
    std::fs::write(dir.path().join("portico.yaml"), conf(b.addr)).unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    eventually("the reloaded daemon serves b", || async move {
        try_get(addr, "/").await.is_ok_and(|r| r.origin() == "b")
    })
    .await;
}

/// At start one line says what this process serves: a person (or `make run`) can act on it.
#[tokio::test]
async fn start_up_says_what_it_serves() {
    let origin = HttpOrigin::start("a").await;
    let proxy = Proxy::start(&one_route(origin.addr)).await;
    proxy
        .wait_for_log(&format!(
            "serving on {} (http); admin none; 1 route, 1 upstream group; configuration {}",
            proxy.addr,
            proxy.conf.display()
        ))
        .await;
}
