//! A real DNS server for tests (UDP on 127.0.0.1, an ephemeral port), answering A, AAAA and
//! SRV questions from records the test changes while fulcrum runs; stopped on drop or `stop()`.
//! Unknown names get NXDOMAIN; known names without records of the asked type an empty answer.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::task::AbortHandle;

/// One SRV record: priority, weight, port, target name.
#[derive(Clone, Debug)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

#[derive(Default)]
struct Zone {
    /// Name (lower-case, no final dot) -> addresses.
    hosts: BTreeMap<String, Vec<IpAddr>>,
    srv: BTreeMap<String, Vec<Srv>>,
    ttl: u32,
    /// AAAA questions go unanswered (a lost packet, an overloaded server).
    mute_aaaa: bool,
}

pub struct DnsServer {
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    queries: Arc<AtomicUsize>,
    task: AbortHandle,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl DnsServer {
    /// Start serving; records answer with `ttl` seconds.
    pub async fn start(ttl: u32) -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns");
        let addr = socket.local_addr().expect("dns addr");
        let zone = Arc::new(Mutex::new(Zone {
            ttl,
            ..Zone::default()
        }));
        let queries = Arc::new(AtomicUsize::new(0));
        let (z, q) = (zone.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                q.fetch_add(1, Ordering::SeqCst);
                let Some(answer) = answer(&z, &buf[..n]) else {
                    continue;
                };
                let _ = socket.send_to(&answer, from).await;
            }
        })
        .abort_handle();
        DnsServer {
            addr,
            zone,
            queries,
            task,
        }
    }

    /// Set the A/AAAA records of `name` (empty: the name exists without addresses).
    pub fn set_host(&self, name: &str, ips: &[IpAddr]) {
        self.zone
            .lock()
            .unwrap()
            .hosts
            .insert(key(name), ips.to_vec());
    }

    /// Set the SRV records of `name`.
    pub fn set_srv(&self, name: &str, records: &[Srv]) {
        self.zone
            .lock()
            .unwrap()
            .srv
            .insert(key(name), records.to_vec());
    }

    /// Leave AAAA questions unanswered (or answer them again).
    pub fn mute_aaaa(&self, on: bool) {
        self.zone.lock().unwrap().mute_aaaa = on;
    }

    /// Questions received so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }

    /// Stop answering (the port closes).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The answer to the query in `packet` (None: not a DNS query).
fn answer(zone: &Mutex<Zone>, packet: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(packet).ok()?;
    let mut resp = Message::new();
    resp.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true);
    resp.add_queries(query.queries().to_vec());
    let zone = zone.lock().ok()?;
    if zone.mute_aaaa
        && query
            .queries()
            .iter()
            .any(|q| q.query_type() == RecordType::AAAA)
    {
        return None;
    }
    for q in query.queries() {
        let name = key(&q.name().to_ascii());
        let known = zone.hosts.contains_key(&name) || zone.srv.contains_key(&name);
        if !known {
            resp.set_response_code(ResponseCode::NXDomain);
            continue;
        }
        let record = |rdata| Record::from_rdata(q.name().clone(), zone.ttl, rdata);
        match q.query_type() {
            RecordType::A | RecordType::AAAA => {
                for ip in zone.hosts.get(&name).into_iter().flatten() {
                    match (ip, q.query_type()) {
                        (IpAddr::V4(v4), RecordType::A) => {
                            resp.add_answer(record(RData::A(A::from(*v4))));
                        }
                        (IpAddr::V6(v6), RecordType::AAAA) => {
                            resp.add_answer(record(RData::AAAA(AAAA::from(*v6))));
                        }
                        _ => {}
                    }
                }
            }
            RecordType::SRV => {
                for s in zone.srv.get(&name).into_iter().flatten() {
                    let target = Name::from_ascii(format!("{}.", key(&s.target))).ok()?;
                    let srv = SRV::new(s.priority, s.weight, s.port, target);
                    resp.add_answer(record(RData::SRV(srv)));
                }
            }
            _ => {}
        }
    }
    resp.to_vec().ok()
}
