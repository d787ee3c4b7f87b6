//! The access log: one line per request, and one per upgraded connection when it closes, as
//! text (combined-like) or JSON, written by a thread of its own so a worker never waits on I/O.

use crate::config::schema::{AccessLogFormat, AccessLogSection};
use crate::metrics::{status_class, METRICS};
use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

/// Lines waiting for the writer; past this a line is dropped and counted, never waited for.
const QUEUE: usize = 65_536;

struct Writer {
    tx: SyncSender<String>,
    format: AccessLogFormat,
}

static WRITER: OnceLock<Writer> = OnceLock::new();

/// Starts the writer thread (once per process): to `path` (appended) or standard output.
pub fn init(section: &AccessLogSection) -> std::io::Result<()> {
    if section.format == AccessLogFormat::Off {
        return Ok(());
    }
    let out: Box<dyn Write + Send> = match &section.path {
        Some(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let (tx, rx) = sync_channel(QUEUE);
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || write_loop(rx, out))?;
    let _ = WRITER.set(Writer {
        tx,
        format: section.format,
    });
    Ok(())
}

/// How often the writer drains the queue. It never blocks on the channel: a parked receiver
/// would make every request's `try_send` wake it (a futex and a context switch per line, a
/// quarter of portico's CPU per request in `make bench`). Lines appear at most this late; a
/// short interval keeps each batch small (at 50 ms the batches showed in p99 latency).
const DRAIN_EVERY: Duration = Duration::from_millis(10);

fn write_loop(rx: Receiver<String>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::new(out);
    loop {
        std::thread::sleep(DRAIN_EVERY);
        let mut wrote = false;
        loop {
            match rx.try_recv() {
                Ok(line) => {
                    let _ = out.write_all(line.as_bytes());
                    wrote = true;
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        if wrote {
            let _ = out.flush();
        }
    }
}

/// What one line says.
pub struct Entry<'a> {
    pub client: std::net::IpAddr,
    pub method: &'a str,
    /// Formatted only if a line is written (no per-request string when the log is off).
    pub uri: &'a dyn std::fmt::Display,
    /// The route's series, when there is a route.
    pub metrics: Option<&'a crate::metrics::RouteMetrics>,
    pub version: http::Version,
    pub status: u16,
    pub bytes_sent: usize,
    pub bytes_received: usize,
    pub duration: Duration,
    pub route: &'a str,
    pub upstream: &'a str,
    pub peer: Option<std::net::SocketAddr>,
    pub referer: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub upgraded: bool,
    /// How a tunnel ended (`closed`, `idle_timeout`, `drained`, `io_error`).
    pub end: Option<&'a str>,
    pub error: Option<&'a str>,
    /// What the route's filters left (`request_id=...`).
    pub vars: Option<&'a crate::filters::Vars>,
    /// The route's filters with a log phase.
    pub loggers: Option<&'a [std::sync::Arc<dyn crate::filters::Filter>]>,
}

pub fn write(e: &Entry) {
    let Some(w) = WRITER.get() else { return };
    let line = match w.format {
        AccessLogFormat::Text => text(e),
        AccessLogFormat::Json => json(e),
        AccessLogFormat::Off => return,
    };
    if let Err(TrySendError::Full(_)) = w.tx.try_send(line) {
        METRICS.access_log_dropped.inc();
    }
}

fn text(e: &Entry) -> String {
    let peer = e.peer.map_or_else(|| "-".to_owned(), |p| p.to_string());
    format!(
        "{} - - [{}] \"{} {} {:?}\" {} {} \"{}\" \"{}\" route={} upstream={} peer={} duration_ms={:.3} received={}{}{}{}{}\n",
        e.client,
        humantime::format_rfc3339_millis(SystemTime::now()),
        e.method,
        e.uri,
        e.version,
        e.status,
        e.bytes_sent,
        e.referer.unwrap_or("-"),
        e.user_agent.unwrap_or("-"),
        e.route,
        e.upstream,
        peer,
        e.duration.as_secs_f64() * 1000.0,
        e.bytes_received,
        if e.upgraded { " upgraded" } else { "" },
        e.end.map(|x| format!(" end={x}")).unwrap_or_default(),
        e.error.map(|x| format!(" error={x}")).unwrap_or_default(),
        text_vars(e.vars),
    )
}

/// ` key=value` for each filter value; quoted (with escapes) unless it is a plain word.
fn text_vars(vars: Option<&crate::filters::Vars>) -> String {
    let mut out = String::new();
    for (k, v) in vars.into_iter().flat_map(|v| v.iter()) {
        let plain = !v.is_empty()
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:/@+".contains(&b));
        match plain {
            true => out.push_str(&format!(" {k}={v}")),
            false => out.push_str(&format!(" {k}={v:?}")),
        }
    }
    out
}

fn json(e: &Entry) -> String {
    let mut line = serde_json::json!({
        "time": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        "client": e.client.to_string(),
        "method": e.method,
        "uri": e.uri.to_string(),
        "version": format!("{:?}", e.version),
        "status": e.status,
        "bytes_sent": e.bytes_sent,
        "bytes_received": e.bytes_received,
        "duration_ms": e.duration.as_secs_f64() * 1000.0,
        "route": e.route,
        "upstream": e.upstream,
        "peer": e.peer.map(|p| p.to_string()),
        "referer": e.referer,
        "user_agent": e.user_agent,
        "upgraded": e.upgraded,
        "end": e.end,
        "error": e.error,
    });
    if let (Some(vars), Some(map)) = (e.vars, line.as_object_mut()) {
        for (k, v) in vars.iter() {
            // A filter's value never hides one of the line's own fields.
            map.entry(k).or_insert_with(|| v.into());
        }
    }
    let mut line = line.to_string();
    line.push('\n');
    line
}

/// Counts a finished request (or tunnel) in the metrics and writes its access-log line.
pub fn account(e: &Entry) {
    match e.metrics {
        Some(m) => {
            m.requests(e.status).inc();
            m.bytes_sent.inc_by(e.bytes_sent as u64);
            m.bytes_received.inc_by(e.bytes_received as u64);
            if !e.upgraded {
                m.duration.observe(e.duration.as_secs_f64());
            }
        }
        // No route (404, refused before routing): the series are looked up.
        None => {
            let m = &*METRICS;
            m.requests
                .with_label_values(&[e.route, e.upstream, status_class(e.status)])
                .inc();
            m.bytes_sent
                .with_label_values(&[e.route])
                .inc_by(e.bytes_sent as u64);
            m.bytes_received
                .with_label_values(&[e.route])
                .inc_by(e.bytes_received as u64);
            if !e.upgraded {
                m.request_duration
                    .with_label_values(&[e.route])
                    .observe(e.duration.as_secs_f64());
            }
        }
    }
    write(e);
    if let Some(loggers) = e.loggers {
        let empty = crate::filters::Vars::default();
        crate::filters::log_all(
            Some(loggers),
            &crate::filters::Done {
                route: e.route,
                upstream: e.upstream,
                client: e.client,
                status: e.status,
                duration: e.duration,
                bytes_sent: e.bytes_sent as u64,
                bytes_received: e.bytes_received as u64,
                websocket: e.upgraded,
                vars: e.vars.unwrap_or(&empty),
            },
        );
    }
}
