//! A small authoritative DNS server for the tests: UDP on `127.0.0.1`, port from the OS,
//! on its own thread. Tests set A and SRV records (with TTLs) while it runs, stop it to
//! simulate an outage and start it again on the same port.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

type Zone = Arc<Mutex<HashMap<(String, RecordType), Vec<Record>>>>;

/// The test DNS server.
pub struct TestDns {
    addr: SocketAddr,
    zone: Zone,
    queries: Arc<Mutex<usize>>,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

fn key(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with('.') {
        lower
    } else {
        format!("{lower}.")
    }
}

impl TestDns {
    /// Starts a server with no records on a free port.
    pub fn start() -> TestDns {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind the DNS port");
        let mut dns = TestDns {
            addr: socket.local_addr().unwrap(),
            zone: Arc::default(),
            queries: Arc::default(),
            running: None,
        };
        dns.serve(socket);
        dns
    }

    /// `ip:port` to put in `dns.nameservers`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queries answered so far.
    pub fn queries(&self) -> usize {
        *self.queries.lock().unwrap()
    }

    /// Replaces the A records of `name`.
    pub fn set_a(&self, name: &str, ips: &[&str], ttl: u32) {
        let owner = Name::from_str(&key(name)).unwrap();
        let records = ips
            .iter()
            .map(|ip| {
                Record::from_rdata(
                    owner.clone(),
                    ttl,
                    RData::A(A(Ipv4Addr::from_str(ip).unwrap())),
                )
            })
            .collect();
        self.zone
            .lock()
            .unwrap()
            .insert((key(name), RecordType::A), records);
    }

    /// Replaces the SRV records of `name`: (priority, weight, port, target).
    pub fn set_srv(&self, name: &str, records: &[(u16, u16, u16, &str)], ttl: u32) {
        let owner = Name::from_str(&key(name)).unwrap();
        let records = records
            .iter()
            .map(|(prio, weight, port, target)| {
                Record::from_rdata(
                    owner.clone(),
                    ttl,
                    RData::SRV(SRV::new(
                        *prio,
                        *weight,
                        *port,
                        Name::from_str(&key(target)).unwrap(),
                    )),
                )
            })
            .collect();
        self.zone
            .lock()
            .unwrap()
            .insert((key(name), RecordType::SRV), records);
    }

    /// Stops answering: the socket is closed, like a server that went down.
    pub fn stop(&mut self) {
        if let Some((stop, thread)) = self.running.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }

    /// Starts answering again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        // While it was down, a short-lived client socket (a resolver's query) may have been
        // given this port: such sockets close within a query timeout, so try for a while.
        let until = std::time::Instant::now() + super::STEP;
        let socket = loop {
            match std::net::UdpSocket::bind(self.addr) {
                Ok(s) => break s,
                Err(_) if std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("cannot bind the DNS port {} again: {e}", self.addr),
            }
        };
        self.serve(socket);
    }

    fn serve(&mut self, socket: std::net::UdpSocket) {
        socket.set_nonblocking(true).unwrap();
        let zone = self.zone.clone();
        let queries = self.queries.clone();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let socket = UdpSocket::from_std(socket).unwrap();
                tokio::select! {
                    _ = answer_loop(&socket, zone, queries) => {}
                    _ = stop_rx => {}
                }
            });
        });
        self.running = Some((stop_tx, thread));
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn answer_loop(socket: &UdpSocket, zone: Zone, queries: Arc<Mutex<usize>>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(request) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        *queries.lock().unwrap() += 1;
        let mut response = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
        response.metadata.authoritative = true;
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        let mut known = false;
        for q in &request.queries {
            response.add_query(q.clone());
            let name = key(&q.name().to_ascii());
            let zone = zone.lock().unwrap();
            known |= zone.keys().any(|(n, _)| *n == name);
            if let Some(records) = zone.get(&(name, q.query_type())) {
                response.add_answers(records.iter().cloned());
            }
        }
        if !known {
            response.metadata.response_code = ResponseCode::NXDomain;
        }
        if let Ok(bytes) = response.to_vec() {
            let _ = socket.send_to(&bytes, from).await;
        }
    }
}
