//! The upstream response-head parser (`crates/upstream/src/h1.rs`) and the raw header
//! block it keeps (`crates/http1/src/raw.rs`).
//!
//! The first byte picks the request method (a `HEAD` response has no body). Invariants:
//! no panic; `Ok(None)` leaves the buffer alone; a parsed head consumes at most the
//! input; the lines passed to the client, and the header map, are well-formed headers
//! again; removing a header leaves none of it in either.
#![no_main]

use bytes::BytesMut;
use http::header::{HeaderName, CONTENT_LENGTH};
use http::Method;
use libfuzzer_sys::fuzz_target;
use sluicegate_http1::Framing;
use sluicegate_upstream::h1::fuzzing::parse_head;

/// Parses `lines` (as `write_passed` writes them) as a header block.
fn reparse(lines: &[u8]) -> usize {
    let mut text = b"HTTP/1.1 200 OK\r\n".to_vec();
    text.extend_from_slice(lines);
    text.extend_from_slice(b"\r\n");
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&text) {
        Ok(httparse::Status::Complete(n)) => {
            assert_eq!(n, text.len(), "passed lines end early");
            resp.headers.len()
        }
        other => panic!(
            "passed lines do not parse ({other:?}): {:?}",
            String::from_utf8_lossy(lines)
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&m, input)) = data.split_first() else {
        return;
    };
    let method = match m % 4 {
        0 => Method::GET,
        1 => Method::HEAD,
        2 => Method::POST,
        _ => Method::CONNECT,
    };
    let mut buf = BytesMut::from(input);
    let Ok(parsed) = parse_head(&mut buf, &method) else {
        return;
    };
    let Some((status, _version, mut headers, _keep_alive, framing)) = parsed else {
        assert_eq!(buf.len(), input.len(), "an incomplete head consumed bytes");
        return;
    };
    assert!(buf.len() < input.len(), "a head was parsed from no bytes");
    if method == Method::HEAD || sluicegate_http1::status_without_body(status) {
        assert_eq!(framing, Framing::Length(0));
    }
    if let (Some(n), Framing::Length(l)) = (headers.content_length(), framing) {
        assert!(l == n || l == 0);
    }
    let map = headers.to_map();
    let mut passed = Vec::new();
    headers.write_passed(&mut passed);
    if let Ok(map) = &map {
        let lines = reparse(&passed);
        assert!(lines <= map.len(), "more lines passed than the block has");
    }
    // Remove the first field's name (and Content-Length): gone from both views.
    let first = map.as_ref().ok().and_then(|m| m.keys().next().cloned());
    for name in first.into_iter().chain([CONTENT_LENGTH]) {
        headers.remove(&name);
        if name == CONTENT_LENGTH {
            assert_eq!(headers.content_length(), None);
        }
        if let Ok(after) = headers.to_map() {
            assert!(!after.contains_key(&name));
        }
        let mut out = Vec::new();
        headers.write_passed(&mut out);
        let wanted: &HeaderName = &name;
        for line in out.split(|b| *b == b'\n') {
            let field = line.split(|b| *b == b':').next().unwrap_or_default();
            assert!(
                !field.eq_ignore_ascii_case(wanted.as_str().as_bytes()),
                "a removed header was passed"
            );
        }
    }
});
