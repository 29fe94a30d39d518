//! Request handling compared with nginx and HAProxy: one corpus of ambiguous and malformed
//! HTTP/1.1 requests ([`corpus`]) goes through the gateway and through both of them (real
//! servers from `sluicegate-testkit`, each in front of its own recording upstream,
//! [`recorder`]). For each request the test notes what the client got and what the
//! upstream received, prints the comparison and holds the gateway to two rules:
//!
//! - it forwards nothing that nginx and HAProxy both refuse (answer 4xx/5xx without
//!   reaching their upstream);
//! - what it forwards can be framed one way only ([`framing`], a strict RFC 9112 reading),
//!   and the upstream received as many requests as the gateway answered from it.
//!
//! nginx and HAProxy are the reference, not the judge: where they disagree with each other
//! or with the RFC, the RFC decides (docs/http1.md lists the results and the differences).
//! Run with `cargo test --test e2e differential -- --nocapture` to see the table.

mod corpus;
mod framing;
mod recorder;

use std::net::SocketAddr;

use sluicegate_testkit::haproxy::HaProxy;
use sluicegate_testkit::nginx::Nginx;

use self::corpus::Entry;
use self::recorder::{Recorder, Reply};
use crate::support::Config;

/// One proxy under test and the upstream behind it.
struct Proxy<'a> {
    name: &'static str,
    addr: SocketAddr,
    upstream: &'a Recorder,
}

/// What one request did through one proxy.
struct Outcome {
    reply: Reply,
    /// Whether the upstream received any bytes.
    forwarded: bool,
    /// The requests the upstream received, or why they are ambiguous.
    requests: Result<usize, String>,
}

impl Outcome {
    /// Answered with an error without reaching the upstream.
    fn refused(&self) -> bool {
        !self.forwarded && self.reply.statuses.iter().any(|s| *s >= 400)
    }

    fn status_cell(&self) -> String {
        let mut s: Vec<String> = self.reply.statuses.iter().map(u16::to_string).collect();
        if self.reply.garbage {
            s.push("?".into());
        }
        match (s.is_empty(), self.reply.closed) {
            (true, true) => "closed".into(),
            (true, false) => "no answer".into(),
            _ => s.join("+"),
        }
    }

    fn forwarded_cell(&self) -> String {
        match (&self.requests, self.forwarded) {
            (_, false) => "no".into(),
            (Ok(1), true) => "yes".into(),
            (Ok(n), true) => format!("yes ×{n}"),
            (Err(_), true) => "AMBIGUOUS".into(),
        }
    }
}

/// Sends every entry through `proxy`, one at a time.
fn run(proxy: &Proxy<'_>, corpus: &[Entry]) -> Vec<Outcome> {
    // Whatever reached the upstream before the first entry (nothing should) is not counted.
    proxy.upstream.take();
    corpus
        .iter()
        .map(|entry| {
            let reply = recorder::exchange(proxy.addr, proxy.upstream, &entry.bytes);
            let conns = proxy.upstream.take();
            let requests = conns
                .iter()
                .map(|c| framing::count_requests(c))
                .sum::<Result<usize, String>>();
            Outcome {
                reply,
                forwarded: !conns.is_empty(),
                requests,
            }
        })
        .collect()
}

#[test]
fn forwards_nothing_nginx_and_haproxy_refuse_and_nothing_ambiguous() {
    let corpus = corpus::entries();
    assert!(
        corpus.len() >= 40,
        "the corpus has {} entries",
        corpus.len()
    );
    let upstreams = [Recorder::start(), Recorder::start(), Recorder::start()];
    let gateway = Config::proxy_to(upstreams[0].addr())
        .listener("client_header_timeout_ms: 2000")
        .listener("client_body_timeout_ms: 2000")
        .start();
    let nginx = Nginx::proxy_to(upstreams[1].addr());
    let haproxy = HaProxy::proxy_to(upstreams[2].addr());
    let proxies = [
        Proxy {
            name: "sluicegate",
            addr: gateway.addr,
            upstream: &upstreams[0],
        },
        Proxy {
            name: "nginx",
            addr: nginx.addr(),
            upstream: &upstreams[1],
        },
        Proxy {
            name: "haproxy",
            addr: haproxy.addr(),
            upstream: &upstreams[2],
        },
    ];
    // The three run side by side: each has its own upstream, and each sends the corpus in
    // order, so an upstream's recording always belongs to one request.
    let results: Vec<Vec<Outcome>> = std::thread::scope(|s| {
        let runs: Vec<_> = proxies
            .iter()
            .map(|p| s.spawn(|| run(p, &corpus)))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    println!("{}", table(&corpus, &proxies, &results));
    let failures = judge(&corpus, &results);
    assert!(
        failures.is_empty(),
        "the gateway broke the rules:\n{}",
        failures.join("\n")
    );
}

/// The rules, applied to the gateway's outcomes (`results[0]`); one line per breach.
fn judge(corpus: &[Entry], results: &[Vec<Outcome>]) -> Vec<String> {
    let mut failures = Vec::new();
    for (i, entry) in corpus.iter().enumerate() {
        let (ours, nginx, haproxy) = (&results[0][i], &results[1][i], &results[2][i]);
        let name = entry.name;
        if ours.forwarded && nginx.refused() && haproxy.refused() {
            failures.push(format!(
                "{name}: forwarded although nginx ({}) and HAProxy ({}) refuse it",
                nginx.status_cell(),
                haproxy.status_cell()
            ));
        }
        match &ours.requests {
            Err(why) => failures.push(format!(
                "{name}: the upstream got an ambiguous message: {why}"
            )),
            Ok(n) if *n != ours.reply.from_upstream => failures.push(format!(
                "{name}: the upstream received {n} request(s), the client got {} answer(s) from it",
                ours.reply.from_upstream
            )),
            Ok(_) => {}
        }
    }
    failures
}

/// The comparison as a Markdown table, with why each ambiguous forward is ambiguous below.
fn table(corpus: &[Entry], proxies: &[Proxy<'_>], results: &[Vec<Outcome>]) -> String {
    let mut out = String::from("| request |");
    for p in proxies {
        out.push_str(&format!(" {0} status | {0} forwarded |", p.name));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|---|".repeat(proxies.len()));
    out.push('\n');
    let mut notes = Vec::new();
    for (i, entry) in corpus.iter().enumerate() {
        out.push_str(&format!("| {} |", entry.name));
        for (p, outcomes) in proxies.iter().zip(results) {
            let o = &outcomes[i];
            out.push_str(&format!(" {} | {} |", o.status_cell(), o.forwarded_cell()));
            if let (true, Err(why)) = (o.forwarded, &o.requests) {
                notes.push(format!("- {} through {}: {why}", entry.name, p.name));
            }
        }
        out.push('\n');
    }
    if !notes.is_empty() {
        out.push_str("\nAmbiguous forwards:\n");
        out.push_str(&notes.join("\n"));
        out.push('\n');
    }
    out
}
