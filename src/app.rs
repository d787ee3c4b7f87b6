//! Builds the Pingora server from a snapshot: process settings, listeners, the proxy service,
//! the health-check and reload services.

use crate::accesslog;
use crate::admin::{self, AdminService};
use crate::cli::Cli;
use crate::conn::{self, Connections};
use crate::drain::DrainService;
use crate::handoff::{self, PidFile, SuccessorService};
use crate::proxy::Portico;
use crate::reload::ReloadService;
use crate::snapshot::Snapshot;
use crate::supervise::Supervised;
use crate::tls::{self, CertStore};
use crate::upstream::health::HealthService;
use arc_swap::ArcSwap;
use pingora::connectors::TransportConnector;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::proxy::http_proxy;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use pingora::tls::ResolvesServerCert;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Write buffering per client connection: a response head and a small body leave in one
/// write (with none, two: about 16% more CPU per small request), and an idle WebSocket keeps
/// 1 KiB for it (a 1024-byte allocation; Pingora's 1460 takes jemalloc's 1536 class).
const DEFAULT_WRITE_BUFFER: usize = 1024;
const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The first DNS round of every group under `resolve`, before anything serves (bounded by the
/// groups' query timeouts). A name that does not resolve yet leaves its group empty (503) and
/// is tried again on the group's interval.
fn resolve_first(snapshot: &Snapshot) {
    let groups: Vec<_> = snapshot
        .upstreams
        .values()
        .filter(|g| g.discovery.is_some())
        .collect();
    if groups.is_empty() {
        return;
    }
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(futures_util::future::join_all(
            groups.iter().map(|g| g.prime(None)),
        )),
        Err(e) => fail(&format!("cannot start the resolver: {e}")),
    };
}

/// Runs portico until it is told to stop; never returns.
pub fn run(cli: &Cli, snapshot: Snapshot) -> ! {
    resolve_first(&snapshot);
    let conf = server_conf(&snapshot, cli);
    let limits = conn::ConnLimits::new(&snapshot.server);
    raise_open_files_limit(limits.max_connections);
    if cli.upgrade {
        handoff::signal_old_when_ready(&conf.pid_file, &conf.upgrade_sock);
    }
    let pid_file = conf.pid_file.clone();
    let grace_period = snapshot
        .server
        .grace_period
        .map_or(DEFAULT_GRACE_PERIOD, |d| d.0);
    let mut server = Server::new_with_opt_and_conf(cli.pingora_opt(), conf);
    // With -u this waits for the old process's listening sockets.
    server.bootstrap();
    let pid_file = if cli.daemon {
        None
    } else {
        PidFile::write(&pid_file)
    };
    if !cli.upgrade {
        // Pingora panics with a backtrace when a listener cannot be bound (a second `make run`):
        // find out first, and say so plainly. With -u the sockets come from the old process.
        for l in &snapshot.listeners {
            if let Err(e) = std::net::TcpListener::bind(l.addr) {
                fail(&format!(
                    "listener {}: {}",
                    l.addr,
                    crate::config::os_message(&e)
                ));
            }
        }
    }
    log::info!("{}", ready_line(cli, &snapshot));

    let write_buffer = snapshot
        .server
        .downstream_write_buffer
        .map_or(DEFAULT_WRITE_BUFFER, |s| s.0 as usize);
    let listeners: Vec<_> = snapshot
        .listeners
        .iter()
        .map(|l| {
            (
                l.addr.to_string(),
                l.tls.as_ref().map(|(_, certs)| Arc::clone(certs)),
            )
        })
        .collect();
    let admin = snapshot.admin.map(|addr| match admin::bind(addr) {
        Ok(l) => l,
        Err(e) => fail(&format!("admin.address {addr}: {e}")),
    });
    if let Err(e) = accesslog::init(&snapshot.access_log) {
        fail(&format!("access_log: {e}"));
    }
    let shared = Arc::new(ArcSwap::from_pointee(snapshot));

    let drain_limit = drain_margin(grace_period) / 2;
    let portico = Portico {
        snapshot: Arc::clone(&shared),
        connector: TransportConnector::new(None),
        drain_limit,
    };
    let mut proxy = Service::new(
        "proxy".to_owned(),
        Connections::new(http_proxy(&server.configuration, portico), limits),
    );
    let mut cert_stores = Vec::new();
    for (i, (addr, tls)) in listeners.iter().enumerate() {
        // Pingora gives each accepted connection a 64 KiB read buffer. Its HTTP/1 parser reads
        // the request head into a buffer of its own anyway and a WebSocket tunnel reads through a
        // per-thread one, so an idle WebSocket would hold it for nothing (58 -> 6 KiB measured).
        // The write buffer is a trade: see server.downstream_write_buffer.
        let mut endpoint =
            ListenerConfig::tcp(addr.as_str()).l4_buffer(L4BufferSettings::new(0, write_buffer));
        if let Some(certs) = tls {
            let store = Arc::new(CertStore::new(Arc::clone(certs)));
            match TlsSettings::with_callbacks(Box::new(tls::NoCallbacks)) {
                Ok(mut settings) => {
                    settings.set_cert_resolver(Arc::clone(&store) as Arc<dyn ResolvesServerCert>);
                    settings.enable_h2();
                    endpoint = endpoint.tls(settings);
                }
                Err(e) => fail(&format!("listener {addr}: {e}")),
            }
            cert_stores.push((i, store));
        }
        proxy.add_listener(endpoint);
    }
    // The TLS hello under the same deadline as a request head.
    proxy
        .endpoints()
        .set_pre_tls_callback(Arc::new(conn::ClientHelloDeadline {
            timeout: limits.header_timeout,
        }));
    server.add_service(proxy);
    let drain = DrainService {
        grace_period: grace_period.saturating_sub(drain_margin(grace_period)),
        before_exit: Mutex::new(Some(Box::new(move || drop(pid_file)))),
    };
    server.add_service(background_service("drain", drain));
    server.add_service(background_service(
        "health checks",
        Supervised {
            name: "health checks (and the pool and limiter sweep)",
            inner: HealthService {
                snapshot: Arc::clone(&shared),
            },
        },
    ));
    if let Some(listener) = admin {
        let service = AdminService {
            listener,
            snapshot: Arc::clone(&shared),
        };
        let name = "admin listener";
        let service = Supervised {
            name,
            inner: service,
        };
        server.add_service(background_service(name, service));
    }
    let (program, args) = handoff::successor_command(&cli.conf, cli.daemon);
    server.add_service(background_service(
        "upgrade on SIGUSR2",
        SuccessorService { program, args },
    ));
    server.add_service(background_service(
        "config reload",
        Supervised {
            name: "config reload",
            inner: ReloadService {
                path: cli.conf.clone(),
                snapshot: shared,
                cert_stores,
            },
        },
    ));
    server.run(RunArgs::default());
    std::process::exit(0)
}

/// The one line that says what this process serves: version, listeners, admin address, what
/// the configuration holds, and which file (with its SHA-256, as `/status` shows it).
fn ready_line(cli: &Cli, snapshot: &Snapshot) -> String {
    let listeners: Vec<String> = snapshot
        .listeners
        .iter()
        .map(|l| {
            let scheme = if l.tls.is_some() { "https" } else { "http" };
            format!("{} ({scheme})", l.addr)
        })
        .collect();
    let admin = snapshot
        .admin
        .map_or_else(|| "none".to_owned(), |a| a.to_string());
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    format!(
        "portico {} serving on {}; admin {admin}; {}, {}; configuration {} (sha256 {})",
        env!("CARGO_PKG_VERSION"),
        listeners.join(", "),
        plural(snapshot.routes.len(), "route", "routes"),
        plural(
            snapshot.upstreams.len(),
            "upstream group",
            "upstream groups"
        ),
        cli.conf.display(),
        snapshot.sha256
    )
}

/// Open WebSockets get their 1001 close this long before the grace period ends, because
/// Pingora drops every task the moment it does.
fn drain_margin(grace: Duration) -> Duration {
    (grace / 4).min(Duration::from_secs(1))
}

/// A start-up failure that is not the file's fault (a busy port, an unwritable log): exit 1.
fn fail(why: &str) -> ! {
    eprintln!("portico: {why}");
    std::process::exit(1)
}

fn server_conf(snapshot: &Snapshot, cli: &Cli) -> ServerConf {
    let s = &snapshot.server;
    let threads = s
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut conf = ServerConf {
        threads,
        pid_file: s
            .pid_file
            .clone()
            .unwrap_or_else(|| "/tmp/portico.pid".into()),
        upgrade_sock: s
            .upgrade_sock
            .clone()
            .unwrap_or_else(|| "/tmp/portico-upgrade.sock".into()),
        grace_period_seconds: Some(ceil_secs(
            s.grace_period.map_or(DEFAULT_GRACE_PERIOD, |d| d.0),
        )),
        graceful_shutdown_timeout_seconds: Some(ceil_secs(
            s.graceful_shutdown_timeout
                .map_or(DEFAULT_SHUTDOWN_TIMEOUT, |d| d.0),
        )),
        daemon: cli.daemon,
        // Off by default: each worker thread runs its own runtime and keeps its connections
        // (nginx's worker model); measured 10% less CPU per request than tokio's
        // work-stealing scheduler (tests/bench, docs/performance.md).
        work_stealing: s.work_stealing.unwrap_or(false),
        // A daemon keeps the working directory: relative paths in the file (certificates,
        // tokens, logs) mean the same on every reload.
        working_directory: std::env::current_dir().ok(),
        ..ServerConf::default()
    };
    // Both pools: Pingora's (requests with bodies) and portico's (plain requests).
    let pool_size = s
        .upstream_keepalive_pool_size
        .unwrap_or(crate::upstream::pool::DEFAULT_CAPACITY);
    conf.upstream_keepalive_pool_size = pool_size;
    crate::upstream::pool::IDLE.set_capacity(pool_size);
    // Our own `retries` per group decides; Pingora's cap must not cut it shorter.
    conf.max_retries = snapshot
        .upstreams
        .values()
        .map(|g| g.retries + 1)
        .max()
        .unwrap_or(1)
        .max(conf.max_retries);
    conf
}

/// Raises the soft limit on open files to the hard one, as HAProxy and Go's runtime do: from a
/// shell's usual 1,024 portico would hold about 500 WebSockets, then fail every accept with
/// EMFILE. Warns when even the hard limit cannot hold `max_connections` (two descriptors per
/// proxied connection, client and peer).
fn raise_open_files_limit(max_connections: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    // An unlimited hard limit still stops at the kernel's per-process ceiling.
    let ceiling = match hard {
        RLIM_INFINITY => std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20),
        h => h,
    };
    let mut limit = soft;
    if soft < ceiling {
        match setrlimit(Resource::RLIMIT_NOFILE, ceiling, hard) {
            Ok(()) => limit = ceiling,
            Err(e) => log::warn!("cannot raise the open files limit from {soft} to {ceiling}: {e}"),
        }
    }
    let needed = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(64);
    if limit < needed {
        log::warn!(
            "the open files limit ({limit}) cannot hold server.max_connections \
             ({max_connections}): each proxied connection takes two descriptors; raise the \
             limit (systemd LimitNOFILE=, ulimit -Hn) or lower max_connections to {}",
            limit.saturating_sub(64) / 2
        );
    }
}

/// Pingora counts these in whole seconds; round up so `500ms` is not zero.
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}
