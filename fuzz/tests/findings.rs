//! Inputs the fuzz targets found in code this crate does not own a fix for yet (the
//! server's request-head parser), kept as tests so the fix has its regression test ready.
//! Each is ignored while it is open; `cargo test -- --ignored` in `fuzz/` runs them.
//! Fixed findings have their tests in the owning crate instead (docs/fuzzing.md).

use bytes::BytesMut;

#[path = "../../crates/server/src/h1/request.rs"]
#[allow(dead_code)]
mod request;

/// `h1_request`: `GET http://example.com:808bca//0? HTTP/1.1` with `Host: other` was accepted
/// and its authority became `Host: example.com:808bca`, a value that is a 400 when a client
/// sends it as the `Host` field.
#[test]
#[ignore = "open: an absolute-form target's authority is not checked like a Host field"]
fn refuses_an_absolute_form_target_whose_authority_is_not_a_host_and_port() {
    let input: &[u8] = b"GET http://example.com:808bca//0? HTTP/1.1\r\nHost8ost:  other\r\n\
Connectiom:8080/a/b?c HTTP1/.1\r\nHost: other\r\nConnecton: close\r\n\r\n";
    let mut short = BytesMut::from(&b"GET http://a:8x/ HTTP/1.1\r\nHost: a\r\n\r\n"[..]);
    assert!(request::parse(&mut short).is_err(), "the short form");
    let mut buf = BytesMut::from(input);
    assert!(request::parse(&mut buf).is_err(), "the fuzzer's input");
}
