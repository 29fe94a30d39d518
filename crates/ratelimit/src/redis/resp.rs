//! RESP2, the part a client needs: commands out as arrays of bulk strings, replies in.
//! Replies are bounded (line, bulk and array sizes, nesting), so a misbehaving server
//! cannot make the gateway allocate without end.

/// A reply from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`.
    Status(String),
    /// `-ERR ...`.
    Error(String),
    /// `:42`.
    Int(i64),
    /// `$3\r\nabc` (`None` for `$-1`).
    Bulk(Option<Vec<u8>>),
    /// `*2\r\n...` (`None` for `*-1`).
    Array(Option<Vec<Reply>>),
}

/// The longest status, error or length line accepted.
const MAX_LINE: usize = 64 * 1024;
/// The largest bulk string accepted.
const MAX_BULK: usize = 1024 * 1024;
/// The most elements of an array accepted.
const MAX_ARRAY: usize = 4096;
/// The deepest nesting accepted.
const MAX_DEPTH: usize = 4;

/// Appends `args` as one command to `out`.
pub fn encode(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses one reply from the start of `buf`: the reply and the bytes it took, `None` when
/// more bytes are needed, or why the bytes are not RESP.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    parse_at(buf, 0, 0)
}

fn parse_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Reply, usize)>, String> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some((line, after)) = line(buf, at + 1)? else {
        return Ok(None);
    };
    match kind {
        b'+' => Ok(Some((Reply::Status(text(line)), after))),
        b'-' => Ok(Some((Reply::Error(text(line)), after))),
        b':' => Ok(Some((Reply::Int(int(line)?), after))),
        b'$' => {
            let n = int(line)?;
            if n < 0 {
                return Ok(Some((Reply::Bulk(None), after)));
            }
            let n = n as usize;
            if n > MAX_BULK {
                return Err(format!("a bulk reply of {n} bytes (at most {MAX_BULK})"));
            }
            if buf.len() < after + n + 2 {
                return Ok(None);
            }
            if &buf[after + n..after + n + 2] != b"\r\n" {
                return Err("a bulk reply not ended by CRLF".into());
            }
            Ok(Some((
                Reply::Bulk(Some(buf[after..after + n].to_vec())),
                after + n + 2,
            )))
        }
        b'*' => {
            let n = int(line)?;
            if n < 0 {
                return Ok(Some((Reply::Array(None), after)));
            }
            let n = n as usize;
            if n > MAX_ARRAY {
                return Err(format!(
                    "an array reply of {n} elements (at most {MAX_ARRAY})"
                ));
            }
            if depth >= MAX_DEPTH {
                return Err(format!("replies nested deeper than {MAX_DEPTH}"));
            }
            let mut items = Vec::with_capacity(n);
            let mut pos = after;
            for _ in 0..n {
                match parse_at(buf, pos, depth + 1)? {
                    Some((r, next)) => {
                        items.push(r);
                        pos = next;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), pos)))
        }
        other => Err(format!("unexpected reply type byte 0x{other:02x}")),
    }
}

/// The line starting at `at` (without its CRLF) and where the next element starts.
fn line(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, String> {
    let rest = buf.get(at..).unwrap_or_default();
    match rest.windows(2).position(|w| w == b"\r\n") {
        Some(end) if end > MAX_LINE => Err(format!("a reply line over {MAX_LINE} bytes")),
        Some(end) => Ok(Some((&rest[..end], at + end + 2))),
        None if rest.len() > MAX_LINE => Err(format!("a reply line over {MAX_LINE} bytes")),
        None => Ok(None),
    }
}

fn text(line: &[u8]) -> String {
    String::from_utf8_lossy(line).into_owned()
}

fn int(line: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("`{}` is not an integer", text(line)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        let mut out = Vec::new();
        encode(&[b"GET", b"k\r\ney"], &mut out);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$5\r\nk\r\ney\r\n");
    }

    #[test]
    fn parses_every_reply_type() {
        let cases: [(&[u8], Reply); 7] = [
            (b"+OK\r\n", Reply::Status("OK".into())),
            (
                b"-NOSCRIPT No matching script\r\n",
                Reply::Error("NOSCRIPT No matching script".into()),
            ),
            (b":-12\r\n", Reply::Int(-12)),
            (b"$3\r\na\r\n\r\n", Reply::Bulk(Some(b"a\r\n".to_vec()))),
            (b"$-1\r\n", Reply::Bulk(None)),
            (b"*-1\r\n", Reply::Array(None)),
            (
                b"*3\r\n:1\r\n*1\r\n+x\r\n$0\r\n\r\n",
                Reply::Array(Some(vec![
                    Reply::Int(1),
                    Reply::Array(Some(vec![Reply::Status("x".into())])),
                    Reply::Bulk(Some(Vec::new())),
                ])),
            ),
        ];
        for (bytes, want) in cases {
            let mut padded = bytes.to_vec();
            padded.extend_from_slice(b"+next\r\n");
            assert_eq!(
                parse(&padded).unwrap(),
                Some((want, bytes.len())),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn waits_for_more_bytes_at_every_cut() {
        let whole: &[u8] = b"*2\r\n$5\r\nhello\r\n:7\r\n";
        for cut in 0..whole.len() {
            assert_eq!(parse(&whole[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert!(parse(whole).unwrap().is_some());
    }

    #[test]
    fn refuses_what_is_not_resp_or_too_big() {
        for bad in [
            &b"?x\r\n"[..],
            b":12a\r\n",
            b"$3\r\nabcde",
            b"$99999999999\r\n",
            b"*99999999\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let long = vec![b'+'; MAX_LINE + 10];
        assert!(parse(&long).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&bytes);
        }
    }
}
