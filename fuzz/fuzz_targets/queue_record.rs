//! The byte format of a queued request inside a WAL record (`crates/queue/src/record.rs`),
//! which delivery decodes from whatever the log hands back.
//!
//! Invariants: no panic; a decoded request encodes to exactly `encoded_len` bytes, and
//! those decode to the same request; the body is never longer than the input.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluicegate_queue::record::{decode, encode, encoded_len};

fuzz_target!(|data: &[u8]| {
    let Ok(req) = decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    assert!(req.body.len() <= data.len());
    assert!(req.target.starts_with('/'));
    let bytes = encode(&req);
    assert_eq!(bytes.len(), encoded_len(&req));
    assert!(bytes.len() <= data.len(), "the encoding grew");
    let again = decode(Bytes::from(bytes)).expect("an encoded request does not decode");
    assert_eq!(again, req);
});
