//! A DNS server on 127.0.0.1 (UDP) whose answers a test changes: A and AAAA records per name
//! with a TTL, NXDOMAIN for a name it does not know, or SERVFAIL for every query. Messages are
//! read and written with hickory-proto.

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

#[derive(Default)]
struct Zone {
    names: Mutex<HashMap<String, (Vec<IpAddr>, u32)>>,
    servfail: AtomicBool,
    queries: AtomicUsize,
}

pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Zone>,
    task: JoinHandle<()>,
}

impl DnsServer {
    pub async fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns");
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Zone::default());
        let z = Arc::clone(&zone);
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                if let Some(answer) = answer(&z, &buf[..n]) {
                    let _ = socket.send_to(&answer, from).await;
                }
            }
        });
        DnsServer { addr, zone, task }
    }

    /// `name` answers `addrs` (A and AAAA by family) with `ttl` seconds; an empty list is a
    /// name with no address (NOERROR, no record).
    pub fn set(&self, name: &str, addrs: &[IpAddr], ttl: u32) {
        let mut names = self.zone.names.lock().unwrap();
        names.insert(name.to_ascii_lowercase(), (addrs.to_vec(), ttl));
    }

    /// Every query gets SERVFAIL (`true`) or its answer again (`false`).
    pub fn servfail(&self, on: bool) {
        self.zone.servfail.store(on, Ordering::SeqCst);
    }

    pub fn queries(&self) -> usize {
        self.zone.queries.load(Ordering::SeqCst)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(zone: &Zone, query: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    zone.queries.fetch_add(1, Ordering::SeqCst);
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true);
    response.add_queries(request.queries().to_vec());
    if zone.servfail.load(Ordering::SeqCst) {
        response.set_response_code(ResponseCode::ServFail);
        return response.to_vec().ok();
    }
    let names = zone.names.lock().unwrap();
    for q in request.queries() {
        let name = q.name().to_string().to_ascii_lowercase();
        let Some((addrs, ttl)) = names.get(name.trim_end_matches('.')) else {
            response.set_response_code(ResponseCode::NXDomain);
            continue;
        };
        for ip in addrs {
            let data = match (ip, q.query_type()) {
                (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
                _ => continue,
            };
            response.add_answer(Record::from_rdata(q.name().clone(), *ttl, data));
        }
    }
    response.to_vec().ok()
}
