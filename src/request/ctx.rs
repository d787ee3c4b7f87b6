//! The per-request context every hook, the forwarding loops and the access log share: the
//! snapshot the request started with, its canonical view and route, its client, its attempts
//! at peers, and the guards that count it.

use super::View;
use crate::filters::{Client, Exchange, Vars};
use crate::limits::ConnectionSlot;
use crate::metrics::{RouteMetrics, METRICS};
use crate::snapshot::{Route, Snapshot};
use crate::upstream::attempts::Attempts;
use crate::upstream::UpstreamGroup;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use prometheus::{Histogram, HistogramVec, IntGauge};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

/// Per-request state. The snapshot is loaded once, when the request starts, so one request
/// never mixes two config versions even if a reload lands mid-way.
pub struct RequestCtx {
    pub(crate) snapshot: Arc<Snapshot>,
    pub(crate) route: Option<usize>,
    pub(crate) client_ip: IpAddr,
    pub(crate) tls: bool,
    pub(crate) upgrade: bool,
    /// The peers tried, the current one counted, and every retry decision.
    pub(crate) attempts: Attempts,
    /// Counts this request as in flight; a tunnel takes it along to its own task.
    pub(crate) in_flight: Option<GaugeGuard>,
    /// A 101 was relayed and the tunnel runs in its own task, which accounts for it at the end.
    pub(crate) handed_off: bool,
    pub(crate) started: Instant,
    pub(crate) connect_started: Option<Instant>,
    pub(crate) connected: Option<Instant>,
    /// A WebSocket upgrade portico answered itself: the status sent and, after a 101, how
    /// the tunnel went.
    pub(crate) ws_status: Option<u16>,
    /// Body bytes of a refused upgrade's response, relayed by portico itself.
    pub(crate) ws_bytes_sent: u64,
    /// Request body bytes seen so far (for `max_body_size`).
    pub(crate) body_bytes: u64,
    /// A request body filter's answer, sent by `fail_to_proxy`.
    pub(crate) body_answer: Option<crate::filters::Answer>,
    /// Counts this upgrade against the route's `max_connections` for its client.
    pub(crate) connection_slot: Option<ConnectionSlot>,
    /// The canonical host and path every policy judges (set before routing).
    pub(crate) view: View,
    /// The upstream group a filter chose instead of the route's.
    pub(crate) upstream: Option<Arc<UpstreamGroup>>,
    /// What the route's filters left for later phases and the access log.
    pub(crate) vars: Vars,
    /// What the route's filters keep for their own later phases.
    pub(crate) ext: http::Extensions,
}

impl RequestCtx {
    /// A request's state as it starts: the live snapshot, counted as in flight.
    pub(crate) fn new(snapshot: Arc<Snapshot>) -> Self {
        RequestCtx {
            snapshot,
            route: None,
            client_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            tls: false,
            upgrade: false,
            attempts: Attempts::default(),
            in_flight: Some(GaugeGuard::new(METRICS.requests_in_flight.clone())),
            handed_off: false,
            started: Instant::now(),
            connect_started: None,
            connected: None,
            ws_status: None,
            body_bytes: 0,
            body_answer: None,
            ws_bytes_sent: 0,
            connection_slot: None,
            view: View::default(),
            upstream: None,
            vars: Vars::default(),
            ext: http::Extensions::new(),
        }
    }

    /// The upstream group the request goes to: a filter's choice, else the route's.
    pub(crate) fn group(&self) -> Option<&Arc<UpstreamGroup>> {
        self.upstream
            .as_ref()
            .or_else(|| self.route().map(|r| &r.upstream))
    }

    /// What the `upstream_request` and `response` phases of the chain see.
    pub(crate) fn exchange<'a>(&'a self, request: &'a RequestHeader) -> Exchange<'a> {
        Exchange {
            request,
            view: &self.view,
            client: Client {
                ip: self.client_ip,
                tls: self.tls,
            },
            route: self.route_name(),
            vars: &self.vars,
            ext: &self.ext,
        }
    }

    /// A connection to the peer is ready (new or pooled): the connect time is observed.
    pub(crate) fn mark_connected(&mut self) {
        let now = Instant::now();
        if let Some(started) = self.connect_started {
            let seconds = now.duration_since(started).as_secs_f64();
            self.observe_upstream(
                |m| &m.upstream_connect,
                &METRICS.upstream_connect_duration,
                seconds,
            );
        }
        self.connected = Some(now);
    }

    /// The peer's response head arrived: the time since connecting is observed.
    pub(crate) fn mark_answered(&self) {
        if let Some(connected) = self.connected {
            let seconds = connected.elapsed().as_secs_f64();
            self.observe_upstream(
                |m| &m.upstream_response,
                &METRICS.upstream_response_duration,
                seconds,
            );
        }
    }

    /// Observes an upstream time in the route's series (resolved when the configuration was
    /// compiled), or, when a filter chose another group, in that group's series by name.
    fn observe_upstream(
        &self,
        route_series: fn(&RouteMetrics) -> &Histogram,
        by_group: &HistogramVec,
        seconds: f64,
    ) {
        match (self.route_metrics(), self.group()) {
            (Some(m), _) => route_series(m).observe(seconds),
            (None, Some(g)) => by_group
                .with_label_values(&[g.name.as_str()])
                .observe(seconds),
            _ => {}
        }
    }

    /// The route's series, resolved when the configuration was compiled; `None` when there is
    /// no route, or a filter sent the request to another group (then the series are looked up
    /// by the group's name).
    pub(crate) fn route_metrics(&self) -> Option<&RouteMetrics> {
        match self.upstream {
            Some(_) => None,
            None => self.route().map(|r| &r.metrics),
        }
    }

    pub(crate) fn route(&self) -> Option<&Route> {
        self.route.map(|i| &self.snapshot.routes[i])
    }

    pub(crate) fn route_name(&self) -> &str {
        self.route().map_or("-", |r| r.name.as_str())
    }
}

/// Increments a gauge now and decrements it on drop, however the request ends (Pingora does
/// not call `logging()` for tunnels cut at shutdown; drops always happen).
pub struct GaugeGuard(IntGauge);

impl GaugeGuard {
    pub(crate) fn new(g: IntGauge) -> Self {
        g.inc();
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The connecting peer's address (the previous hop; the client unless a proxy is in between).
pub fn peer_ip(session: &Session) -> IpAddr {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip())
}
