//! The client-facing HTTP/1.1 request-head parser (`crates/server/src/h1/request.rs`).
//!
//! The parser's own source file is compiled into this target as it is (the module is
//! private to the server crate): no copy, so the target always fuzzes the code that runs.
//! Invariants: no panic; `Ok(None)` leaves the buffer alone; a parsed head consumes at
//! most the input, and writing it out again parses to the same request.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluicegate_http1::Framing;

#[path = "../../crates/server/src/h1/request.rs"]
#[allow(dead_code)]
mod request;

fn write_head(head: &request::Head) -> Vec<u8> {
    let p = &head.parts;
    let mut out = Vec::new();
    out.extend_from_slice(p.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(p.uri.to_string().as_bytes());
    out.extend_from_slice(if p.version == http::Version::HTTP_10 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    for (name, value) in &p.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let Ok(parsed) = request::parse(&mut buf) else {
        return;
    };
    let Some(head) = parsed else {
        assert_eq!(buf.len(), data.len(), "an incomplete head consumed bytes");
        return;
    };
    assert!(buf.len() < data.len(), "a head was parsed from no bytes");
    assert_eq!(
        &data[data.len() - buf.len()..],
        &buf[..],
        "the rest is not the input's tail"
    );
    if let Framing::Length(n) = head.framing {
        assert!(n > 0);
    }
    let text = write_head(&head);
    let mut again = BytesMut::from(&text[..]);
    let second = match request::parse(&mut again) {
        Ok(Some(h)) => h,
        Ok(None) => panic!(
            "the written head is incomplete: {:?}",
            String::from_utf8_lossy(&text)
        ),
        Err(e) => panic!(
            "the written head is refused ({e}): {:?}",
            String::from_utf8_lossy(&text)
        ),
    };
    assert!(again.is_empty(), "the written head left bytes behind");
    assert_eq!(head.parts.method, second.parts.method);
    assert_eq!(head.parts.uri, second.parts.uri);
    assert_eq!(head.parts.version, second.parts.version);
    assert_eq!(head.parts.headers, second.parts.headers);
    assert_eq!(head.framing, second.framing);
    assert_eq!(head.expect_continue, second.expect_continue);
    assert_eq!(head.upgrade, second.upgrade);
    // A dropped Content-Length (next to chunked) closes the first connection only.
    if !matches!(head.framing, Framing::Chunked(_)) {
        assert_eq!(head.keep_alive, second.keep_alive);
    }
});
