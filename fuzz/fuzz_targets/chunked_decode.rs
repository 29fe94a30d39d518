//! The HTTP/1.1 body decoder shared by the server and the upstream client
//! (`sluicegate_http1::decode`: `Content-Length`, chunked, read-to-close).
//!
//! The first byte picks the framing and how the rest arrives (all at once or in pieces).
//! Invariants: no panic, no loop without progress; never more body bytes than input
//! bytes (nor than a declared length); the same body whether the bytes arrive at once or
//! in pieces; a decoded chunked body encoded again decodes to itself.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluicegate_http1::{decode, push_chunk, ChunkState, Decoded, Framing};

/// Decodes `input` arriving in pieces of `step` bytes (0: all at once). Returns the body,
/// whether it ended, and the error if there was one.
fn run(mut framing: Framing, input: &[u8], step: usize) -> (Vec<u8>, bool, Option<&'static str>) {
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut fed = 0;
    loop {
        if buf.is_empty() || step > 0 {
            let take = if step == 0 {
                input.len() - fed
            } else {
                step.min(input.len() - fed)
            };
            buf.extend_from_slice(&input[fed..fed + take]);
            fed += take;
        }
        // Each call makes progress or asks for more; bound the calls per feed anyway.
        let mut calls = 0;
        loop {
            calls += 1;
            assert!(
                calls <= input.len() + 4,
                "the decoder does not make progress"
            );
            match decode(&mut framing, &mut buf) {
                Ok(Decoded::Data(d)) => {
                    assert!(!d.is_empty(), "an empty data piece");
                    body.extend_from_slice(&d);
                }
                Ok(Decoded::End) => return (body, true, None),
                Ok(Decoded::NeedMore) => break,
                Err(e) => return (body, false, Some(e)),
            }
        }
        if fed == input.len() {
            return (body, false, None);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    let framing = match mode & 3 {
        0 | 1 => Framing::Chunked(ChunkState::Size),
        2 => Framing::Length(u64::from(mode >> 2) * 7),
        _ => Framing::Close,
    };
    let step = usize::from(mode >> 4);
    let (whole, ended, error) = run(framing, input, 0);
    assert!(whole.len() <= input.len(), "more body than input");
    if let Framing::Length(n) = framing {
        assert!(whole.len() as u64 <= n);
        assert_eq!(ended, whole.len() as u64 == n);
    }
    let (pieces, pieces_ended, pieces_error) = run(framing, input, step);
    if error.is_none() && pieces_error.is_none() {
        assert_eq!(whole, pieces, "the body depends on how the bytes arrived");
        assert_eq!(ended, pieces_ended);
    }
    if ended && matches!(framing, Framing::Chunked(_)) {
        let mut encoded = Vec::new();
        for piece in whole.chunks(usize::from(mode) + 1) {
            push_chunk(&mut encoded, piece);
        }
        encoded.extend_from_slice(b"0\r\n\r\n");
        let (again, again_ended, again_error) = run(framing, &encoded, 0);
        assert_eq!(again_error, None);
        assert!(again_ended);
        assert_eq!(again, whole);
    }
});
