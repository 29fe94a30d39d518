//! Properties of the body decoder on any input, split anywhere: what a peer's bytes can
//! make it do. It never panics, never yields more than it was given, and never reads a
//! byte past the end of a body (the next pipelined message is left in the buffer).

use bytes::BytesMut;
use proptest::prelude::*;
use sluicegate_http1::{decode, push_chunk, ChunkState, Decoded, Framing};

/// Feeds `input` to the decoder in pieces cut at `cuts`, as reads from a socket would
/// arrive. Returns the body, whether it ended (or the error), and what was left unread.
fn feed(
    mut framing: Framing,
    input: &[u8],
    cuts: &[usize],
) -> (Vec<u8>, Result<bool, &'static str>, Vec<u8>) {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.push(input.len());
    points.sort_unstable();
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut at = 0;
    for p in points {
        buf.extend_from_slice(&input[at..p]);
        at = p;
        loop {
            match decode(&mut framing, &mut buf) {
                Ok(Decoded::Data(d)) => body.extend_from_slice(&d),
                Ok(Decoded::End) => return (body, Ok(true), rest(&buf, &input[at..])),
                Ok(Decoded::NeedMore) => break,
                Err(e) => return (body, Err(e), rest(&buf, &input[at..])),
            }
        }
    }
    (body, Ok(false), buf.to_vec())
}

/// What is left unread: the buffer and what has not arrived in it yet.
fn rest(buf: &[u8], unsent: &[u8]) -> Vec<u8> {
    [buf, unsent].concat()
}

proptest! {
    #[test]
    fn a_chunked_body_decodes_to_its_chunks_and_leaves_the_next_message(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..64), 0..8),
        next in prop::collection::vec(any::<u8>(), 0..32),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut wire = Vec::new();
        for c in &chunks {
            push_chunk(&mut wire, c);
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        wire.extend_from_slice(&next);
        let (body, ended, left) = feed(Framing::Chunked(ChunkState::Size), &wire, &cuts);
        prop_assert_eq!(ended, Ok(true));
        prop_assert_eq!(body, chunks.concat());
        prop_assert_eq!(left, next);
    }

    #[test]
    fn a_length_body_stops_at_its_length(
        body in prop::collection::vec(any::<u8>(), 0..128),
        next in prop::collection::vec(any::<u8>(), 0..32),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let wire = [body.as_slice(), next.as_slice()].concat();
        let (got, ended, left) = feed(Framing::Length(body.len() as u64), &wire, &cuts);
        prop_assert_eq!(ended, Ok(true));
        prop_assert_eq!(got, body);
        prop_assert_eq!(left, next);
    }

    #[test]
    fn any_bytes_as_a_chunked_body_never_yield_more_than_was_sent(
        input in prop::collection::vec(any::<u8>(), 0..512),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let (body, _, left) = feed(Framing::Chunked(ChunkState::Size), &input, &cuts);
        prop_assert!(body.len() + left.len() <= input.len());
    }

    #[test]
    fn chunk_like_bytes_never_yield_more_than_was_sent(
        parts in prop::collection::vec(
            prop_oneof![
                Just(b"\r\n".to_vec()),
                Just(b"0\r\n".to_vec()),
                Just(b";ext=1".to_vec()),
                "[0-9a-fA-F]{1,17}".prop_map(String::into_bytes),
                prop::collection::vec(any::<u8>(), 0..16),
            ],
            0..24,
        ),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let input = parts.concat();
        let (body, _, left) = feed(Framing::Chunked(ChunkState::Size), &input, &cuts);
        prop_assert!(body.len() + left.len() <= input.len());
    }
}
