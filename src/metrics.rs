//! Prometheus metrics: one registry of portico's own, served by the admin listener.
//!
//! Label sets are bounded by the config: route and upstream names, peer addresses (from the
//! file, or at most 256 per name from DNS), status classes and fixed outcome words; never raw
//! paths or client addresses. Wasm guests' own metrics: at most 1,000 series in all.

use crate::snapshot::Snapshot;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::LazyLock;

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_connect_duration: HistogramVec,
    pub upstream_response_duration: HistogramVec,
    pub requests_in_flight: IntGauge,
    pub connections_open: IntGauge,
    pub websockets_open: IntGaugeVec,
    pub websocket_upgrades: IntCounterVec,
    pub bytes_received: IntCounterVec,
    pub bytes_sent: IntCounterVec,
    pub peer_up: IntGaugeVec,
    pub peer_in_flight: IntGaugeVec,
    pub health_checks: IntCounterVec,
    pub peers_discovered: IntGaugeVec,
    pub peer_changes: IntCounterVec,
    pub retries: IntCounterVec,
    pub rejections: IntCounterVec,
    pub filter_errors: IntCounterVec,
    /// Metrics Wasm guests define (`proxy_define_metric`), by plugin and the guest's name.
    pub wasm_counters: IntCounterVec,
    pub wasm_gauges: IntGaugeVec,
    pub wasm_histograms: HistogramVec,
    pub reloads: IntCounterVec,
    pub access_log_dropped: prometheus::IntCounter,
}

/// The process-wide metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("valid metric");
    r.register(Box::new(h.clone())).expect("registered once");
    h
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        let requests_in_flight = IntGauge::new(
            "portico_requests_in_flight",
            "Requests being proxied now, open WebSockets included",
        )
        .expect("valid metric");
        r.register(Box::new(requests_in_flight.clone()))
            .expect("registered once");
        let connections_open = IntGauge::new(
            "portico_connections_open",
            "Client connections open now, all listeners (upgraded ones included)",
        )
        .expect("valid metric");
        r.register(Box::new(connections_open.clone()))
            .expect("registered once");
        let access_log_dropped = prometheus::IntCounter::new(
            "portico_access_log_dropped_total",
            "Access-log lines dropped because the writer fell behind",
        )
        .expect("valid metric");
        r.register(Box::new(access_log_dropped.clone()))
            .expect("registered once");
        Metrics {
            requests: counter(&r, "portico_requests_total", "Requests answered, by route, upstream and status class", &["route", "upstream", "class"]),
            request_duration: histogram(&r, "portico_request_duration_seconds", "Time from request start to the end of the response", &["route"]),
            upstream_connect_duration: histogram(&r, "portico_upstream_connect_duration_seconds", "Time to get a connection to a peer (0 when reused)", &["upstream"]),
            upstream_response_duration: histogram(&r, "portico_upstream_response_duration_seconds", "Time from connection to the peer's response header", &["upstream"]),
            requests_in_flight,
            connections_open,
            websockets_open: gauge(&r, "portico_websockets_open", "Upgraded connections open now", &["route", "upstream"]),
            websocket_upgrades: counter(&r, "portico_websocket_upgrades_total", "Upgrade requests by outcome: upgraded, refused (peer did not answer 101), rejected (by portico), failed (no peer)", &["route", "outcome"]),
            bytes_received: counter(&r, "portico_downstream_received_bytes_total", "Body bytes received from clients, tunnelled bytes included", &["route"]),
            bytes_sent: counter(&r, "portico_downstream_sent_bytes_total", "Body bytes sent to clients, tunnelled bytes included", &["route"]),
            peer_up: gauge(&r, "portico_peer_up", "1 when the peer is eligible (healthy), else 0", &["upstream", "peer"]),
            peer_in_flight: gauge(&r, "portico_peer_in_flight", "Requests and open WebSockets on the peer now", &["upstream", "peer"]),
            health_checks: counter(&r, "portico_health_checks_total", "Active health-check probes by result", &["upstream", "result"]),
            peers_discovered: gauge(&r, "portico_peers_discovered", "Peers the group's DNS names resolve to now (resolve)", &["upstream"]),
            peer_changes: counter(&r, "portico_peer_changes_total", "Peers DNS added to or removed from the group (resolve)", &["upstream", "change"]),
            retries: counter(&r, "portico_retries_total", "Connect failures retried on another peer", &["upstream"]),
            rejections: counter(&r, "portico_rejections_total", "Requests answered by portico itself, by reason", &["route", "reason"]),
            filter_errors: counter(&r, "portico_filter_errors_total", "Filter failures (a Wasm guest's trap, timeout or bad return), by route and filter", &["route", "filter"]),
            wasm_counters: counter(&r, "portico_wasm_counter_total", "Counters Wasm guests define, by plugin and name", &["plugin", "name"]),
            wasm_gauges: gauge(&r, "portico_wasm_gauge", "Gauges Wasm guests define, by plugin and name", &["plugin", "name"]),
            wasm_histograms: {
                // A guest's values have its own unit: powers of 4 from 1 to about 4 billion.
                let buckets = (0..16).map(|i| 4f64.powi(i)).collect();
                let h = HistogramVec::new(
                    HistogramOpts::new("portico_wasm_histogram", "Histograms Wasm guests define, by plugin and name").buckets(buckets),
                    &["plugin", "name"],
                )
                .expect("valid metric");
                r.register(Box::new(h.clone())).expect("registered once");
                h
            },
            reloads: counter(&r, "portico_reloads_total", "SIGHUP reloads by outcome", &["outcome"]),
            access_log_dropped,
            registry: r,
        }
    }

    /// The text exposition, with the peer gauges read from `snapshot` at this moment.
    pub fn render(&self, snapshot: &Snapshot) -> Vec<u8> {
        self.peer_up.reset();
        self.peer_in_flight.reset();
        self.peers_discovered.reset();
        for group in snapshot.upstreams.values() {
            if let Some(d) = &group.discovery {
                self.peers_discovered
                    .with_label_values(&[&group.name])
                    .set(d.discovered() as i64);
            }
            for (peer, healthy) in group.peers() {
                let addr = peer.addr.to_string();
                self.peer_up
                    .with_label_values(&[&group.name, &addr])
                    .set(i64::from(healthy));
                self.peer_in_flight
                    .with_label_values(&[&group.name, &addr])
                    .set(peer.inflight() as i64);
            }
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// `2xx`, `4xx`, ...; `0xx` when nothing was sent (the client went away first).
pub fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "0xx",
    }
}

/// One route's series, resolved once when the snapshot is built: a request then increments
/// them without hashing label values or taking the vectors' locks.
pub struct RouteMetrics {
    /// By status class: 0xx (no response), 1xx ... 5xx.
    requests: [IntCounter; 6],
    pub bytes_sent: IntCounter,
    pub bytes_received: IntCounter,
    pub duration: Histogram,
    /// The route's upstream group's connect and response times.
    pub upstream_connect: Histogram,
    pub upstream_response: Histogram,
}

impl RouteMetrics {
    pub fn new(route: &str, upstream: &str) -> Self {
        let m = &*METRICS;
        RouteMetrics {
            requests: [0, 100, 200, 300, 400, 500].map(|s| {
                m.requests
                    .with_label_values(&[route, upstream, status_class(s)])
            }),
            bytes_sent: m.bytes_sent.with_label_values(&[route]),
            bytes_received: m.bytes_received.with_label_values(&[route]),
            duration: m.request_duration.with_label_values(&[route]),
            upstream_connect: m.upstream_connect_duration.with_label_values(&[upstream]),
            upstream_response: m.upstream_response_duration.with_label_values(&[upstream]),
        }
    }

    pub fn requests(&self, status: u16) -> &IntCounter {
        let class = usize::from(status / 100);
        &self.requests[if class <= 5 { class } else { 0 }]
    }
}
