//! Parsing a request head (RFC 9112 §2–§6) into `http` types, and deciding how its body
//! is framed.
//!
//! Invariants: a head is either complete and valid, incomplete (more bytes needed), or
//! rejected with the status the client gets (400, or 431 for too many fields); header
//! values share the head's buffer instead of being copied; a request whose body length
//! cannot be determined safely (conflicting lengths, a transfer coding other than chunked
//! last) is rejected, never guessed, since guessing is how requests get smuggled.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri, Version};
use smallvec::SmallVec;

use sluicegate_core::error::{Kind, ProxyError};
use sluicegate_http1::{ChunkState, Framing};

/// Header fields parsed per request (more is a 431).
const MAX_HEADERS: usize = 512;

/// A parsed request head and what the connection must know about it.
pub(super) struct Head {
    /// Method, URI, version and headers, ready for the driver.
    pub parts: http::request::Parts,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the client allows another request on this connection.
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// A protocol upgrade request (`Connection: upgrade` + `Upgrade`).
    pub upgrade: bool,
}

fn bad(message: impl Into<String>) -> ProxyError {
    ProxyError::client(Kind::BadRequest, message)
}

/// Parses the head at the front of `buf` and consumes it; `Ok(None)` when it is not
/// complete yet.
pub(super) fn parse(buf: &mut BytesMut) -> Result<Option<Head>, ProxyError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ProxyError::client(
                Kind::HeaderTooLarge,
                format!("the request has more than {MAX_HEADERS} header fields"),
            ))
        }
        Err(e) => return Err(bad(format!("malformed request head: {e}"))),
    };
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
        .map_err(|_| bad("malformed request method"))?;
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // Values and the target will share the head's buffer: note where each lies, then split.
    // The fields that decide framing and keep-alive are read on this pass, so none of
    // them is looked up in the map afterwards.
    let target = span(buf, len, req.path.unwrap_or("").as_bytes());
    let mut facts = Facts::default();
    // On the stack for usual heads; drained in place below (moving it costs a copy).
    let mut fields: SmallVec<[(HeaderName, std::ops::Range<usize>); 16]> = SmallVec::new();
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| bad(format!("malformed header name `{}`", h.name)))?;
        facts.field(&name, h.value);
        fields.push((name, span(buf, len, h.value)));
    }
    let head_bytes = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head_bytes.slice(target))
        .map_err(|_| bad("malformed request target"))?;
    // Room for a few headers plugins add; the forwarding headers are written straight
    // into an HTTP/1.1 upstream's head, and an HTTP/2 request reserves its own.
    let mut headers = HeaderMap::with_capacity(fields.len() + 2);
    for (name, at) in fields.drain(..) {
        let value = HeaderValue::from_maybe_shared(head_bytes.slice(at))
            .map_err(|_| bad(format!("malformed value for header `{name}`")))?;
        headers.append(name, value);
    }
    let http11 = version == Version::HTTP_11;
    host_rules(&facts, http11, &uri, &mut headers)?;
    // A request that sent both `Transfer-Encoding` and `Content-Length` is answered and
    // the connection closed (RFC 9112 §6.1).
    let (framing, close_after) = facts.framing(version, &mut headers)?;
    let keep_alive = if http11 {
        !facts.close
    } else {
        facts.keep_alive && !facts.close
    } && !close_after;
    let expect_continue = http11 && facts.expect_continue;
    let upgrade = http11 && facts.upgrade_header && facts.upgrade_token;
    let mut parts = http::Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(Head {
        parts,
        framing,
        keep_alive,
        expect_continue,
        upgrade,
    }))
}

/// The `Host` rules of RFC 9112 §3.2: an HTTP/1.1 request has exactly one `Host` field
/// (more than one would let the gateway route on one and the upstream read another), and
/// an absolute-form target's authority replaces it (§3.2.2), so routing, plugins and the
/// upstream all see the same host.
fn host_rules(
    facts: &Facts,
    http11: bool,
    uri: &Uri,
    headers: &mut HeaderMap,
) -> Result<(), ProxyError> {
    if facts.hosts > 1 {
        return Err(bad("the request has more than one Host header field"));
    }
    if http11 && facts.hosts == 0 {
        return Err(bad("an HTTP/1.1 request must have a Host header field"));
    }
    if let (Some(_), Some(authority)) = (uri.scheme(), uri.authority()) {
        // Userinfo in an `http(s)` target is deprecated and a known phishing form (RFC 9110
        // §4.2.4): refused rather than passed on as part of `Host`.
        if authority.as_str().contains('@') {
            return Err(bad(
                "the request target has userinfo (`user@`) in its authority",
            ));
        }
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| bad("malformed authority in the request target"))?;
        headers.insert(header::HOST, host);
    }
    Ok(())
}

/// Where `part` (a slice the parser returned) lies within the first `len` bytes of `buf`;
/// an empty range for anything that does not (an empty value may point elsewhere).
fn span(buf: &[u8], len: usize, part: &[u8]) -> std::ops::Range<usize> {
    let start = (part.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
    match start.checked_add(part.len()) {
        Some(end) if start <= len && end <= len => start..end,
        _ => 0..0,
    }
}

/// What the fields that frame the message say, read once while the head is parsed.
#[derive(Default)]
struct Facts {
    content_length: Option<u64>,
    /// A malformed or conflicting `Content-Length` (an error unless the body is chunked,
    /// in which case the field is dropped).
    length_error: Option<&'static str>,
    /// `Transfer-Encoding` was sent; `Some(true)` when its last coding is `chunked`.
    te_chunked: Option<bool>,
    close: bool,
    keep_alive: bool,
    upgrade_token: bool,
    upgrade_header: bool,
    /// The first `Expect` field asks for `100-continue`.
    expect_continue: bool,
    expect_seen: bool,
    /// `Host` fields seen.
    hosts: u32,
}

impl Facts {
    /// Notes one field.
    fn field(&mut self, name: &HeaderName, value: &[u8]) {
        if *name == header::CONTENT_LENGTH {
            match sluicegate_http1::parse_length(value) {
                None => {
                    self.length_error.get_or_insert("malformed Content-Length");
                }
                Some(n) if self.content_length.is_some_and(|l| l != n) => {
                    self.length_error
                        .get_or_insert("conflicting Content-Length values");
                }
                Some(n) => self.content_length = Some(n),
            }
        } else if *name == header::TRANSFER_ENCODING {
            let last = value
                .split(|b| *b == b',')
                .map(<[u8]>::trim_ascii)
                .rfind(|t| !t.is_empty());
            match last {
                Some(t) => self.te_chunked = Some(t.eq_ignore_ascii_case(b"chunked")),
                None => {
                    self.te_chunked.get_or_insert(false);
                }
            }
        } else if *name == header::CONNECTION {
            for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                self.close |= token.eq_ignore_ascii_case(b"close");
                self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                self.upgrade_token |= token.eq_ignore_ascii_case(b"upgrade");
            }
        } else if *name == header::UPGRADE {
            self.upgrade_header = true;
        } else if *name == header::HOST {
            self.hosts += 1;
        } else if *name == header::EXPECT && !self.expect_seen {
            self.expect_seen = true;
            self.expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        }
    }

    /// The body's framing (RFC 9112 §6.3) and whether the connection must close after it.
    /// A `Content-Length` next to `Transfer-Encoding` is removed: it must not reach the
    /// upstream. Otherwise a malformed or conflicting one is a 400.
    fn framing(
        &self,
        version: Version,
        headers: &mut HeaderMap,
    ) -> Result<(Framing, bool), ProxyError> {
        if let Some(chunked_last) = self.te_chunked {
            if version == Version::HTTP_10 {
                return Err(bad(
                    "Transfer-Encoding is not allowed in an HTTP/1.0 request",
                ));
            }
            if !chunked_last {
                return Err(bad(
                    "the request's Transfer-Encoding does not end with chunked",
                ));
            }
            let had_length = self.content_length.is_some() || self.length_error.is_some();
            if had_length {
                headers.remove(header::CONTENT_LENGTH);
            }
            return Ok((Framing::Chunked(ChunkState::Size), had_length));
        }
        if let Some(message) = self.length_error {
            return Err(bad(message));
        }
        Ok((
            match self.content_length {
                None | Some(0) => Framing::Done,
                Some(n) => Framing::Length(n),
            },
            false,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Option<Head>, ProxyError> {
        let mut buf = BytesMut::from(text.as_bytes());
        parse(&mut buf)
    }

    /// `text` with a `Host` line after its request line when it has none: the tests of
    /// other rules need a head that meets the Host rules.
    fn with_host(text: &str) -> String {
        match text.split_once("\r\n") {
            Some((line, rest)) if !text.to_ascii_lowercase().contains("\r\nhost:") => {
                format!("{line}\r\nHost: x\r\n{rest}")
            }
            _ => text.to_string(),
        }
    }

    fn head(text: &str) -> Head {
        let text = &with_host(text);
        match parse_text(text) {
            Ok(Some(h)) => h,
            Ok(None) => panic!("incomplete: {text:?}"),
            Err(e) => panic!("rejected: {text:?}: {e}"),
        }
    }

    fn status(text: &str) -> u16 {
        match parse_text(&with_host(text)) {
            Err(e) => e.status().as_u16(),
            Ok(_) => 0,
        }
    }

    #[test]
    fn parses_a_request_and_leaves_the_next_one_in_the_buffer() {
        let mut buf = BytesMut::from(
            &b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Two: 1\r\nX-Two: 2\r\n\r\nGET /next"[..],
        );
        let h = parse(&mut buf).unwrap().unwrap();
        assert_eq!(h.parts.method, Method::GET);
        assert_eq!(h.parts.uri, "/a?b=1");
        assert_eq!(h.parts.version, Version::HTTP_11);
        assert_eq!(h.parts.headers["host"], "x");
        assert_eq!(h.parts.headers.get_all("x-two").iter().count(), 2);
        assert_eq!(h.framing, Framing::Done);
        assert!(h.keep_alive && !h.expect_continue && !h.upgrade);
        assert_eq!(&buf[..], b"GET /next");
    }

    #[test]
    fn keeps_empty_header_values() {
        let h = head("GET / HTTP/1.1\r\nX-Empty:\r\nX-Blank:   \r\nHost: x\r\n\r\n");
        assert_eq!(h.parts.headers["x-empty"], "");
        assert_eq!(h.parts.headers["x-blank"], "");
        assert_eq!(h.parts.headers["host"], "x");
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // A deterministic spread of inputs: prefixes and byte flips of valid heads.
        let valid = b"POST /p?q=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc";
        let mut state = 0x2545_f491_u32;
        for i in 0..20_000 {
            let mut bytes = valid[..(i % valid.len()) + 1].to_vec();
            for _ in 0..(i % 4) {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let at = state as usize % bytes.len();
                bytes[at] = (state >> 8) as u8;
            }
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = parse(&mut buf);
        }
    }

    #[test]
    fn waits_for_the_rest_of_an_incomplete_head() {
        assert!(parse_text("GET / HTTP/1.1\r\nHost: x\r\n")
            .unwrap()
            .is_none());
        assert!(parse_text("GE").unwrap().is_none());
    }

    #[test]
    fn frames_bodies_by_length_or_chunked() {
        let h = head("POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(12));
        let h = head("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(5));
        let h = head("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked(ChunkState::Size));
        assert!(h.keep_alive);
    }

    #[test]
    fn drops_the_content_length_of_a_chunked_request_and_closes_after_it() {
        let h = head("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked(ChunkState::Size));
        assert!(!h.parts.headers.contains_key("content-length"));
        assert!(!h.keep_alive);
    }

    #[test]
    fn drops_even_a_malformed_length_next_to_chunked_and_reads_tokens_in_any_case() {
        let h =
            head("POST / HTTP/1.1\r\nContent-Length: abc\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked(ChunkState::Size));
        assert!(!h.parts.headers.contains_key("content-length"));
        assert!(!h.keep_alive);
        let h = head("GET / HTTP/1.0\r\nConnection: foo , Keep-Alive\r\n\r\n");
        assert!(h.keep_alive);
        let h = head("GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: CLOSE\r\n\r\n");
        assert!(!h.keep_alive);
        let h =
            head("GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\r\n");
        assert!(h.upgrade);
        // Only the first `Expect` counts, as a lookup in the map would find it.
        let h = head(
            "POST / HTTP/1.1\r\nExpect: foo\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        );
        assert!(!h.expect_continue);
        // A transfer coding list split over two fields: the last coding decides.
        assert_eq!(
            status(
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n"
            ),
            400
        );
        let h = head(
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert_eq!(h.framing, Framing::Chunked(ChunkState::Size));
    }

    #[test]
    fn rejects_what_could_smuggle_a_request() {
        for text in [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5 5\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
        ] {
            assert_eq!(status(text), 400, "{text:?}");
        }
    }

    #[test]
    fn rejects_malformed_heads_with_400_and_too_many_fields_with_431() {
        for text in [
            "GARBAGE\x01 / HTTP/1.1\r\n\r\n",
            "GET / HTTP/9.9\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",
        ] {
            assert_eq!(status(text), 400, "{text:?}");
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        assert_eq!(status(&format!("GET / HTTP/1.1\r\n{many}\r\n")), 431);
    }

    #[test]
    fn follows_the_keep_alive_rules_of_each_version() {
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
    }

    #[test]
    fn notices_expect_continue_and_upgrades() {
        assert!(
            head("POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n")
                .expect_continue
        );
        assert!(!head("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n").expect_continue);
        assert!(
            head("GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").upgrade
        );
        assert!(!head("GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n").upgrade);
    }

    #[test]
    fn an_http_1_1_request_needs_exactly_one_host() {
        let missing = parse_text("GET / HTTP/1.1\r\nX-A: 1\r\n\r\n")
            .err()
            .unwrap();
        assert_eq!(missing.status(), 400);
        assert!(missing.message.contains("Host"), "{}", missing.message);
        let two = parse_text("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
            .err()
            .unwrap();
        assert_eq!(two.status(), 400);
        assert!(
            two.message.contains("more than one Host"),
            "{}",
            two.message
        );
        let also_two = parse_text("GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n");
        assert_eq!(also_two.err().map(|e| e.status().as_u16()), Some(400));
        // HTTP/1.0 predates Host: none is fine.
        assert!(parse_text("GET / HTTP/1.0\r\n\r\n").unwrap().is_some());
    }

    #[test]
    fn an_absolute_form_target_replaces_the_host() {
        let h = head("GET http://other.example:8080/p?q=1 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(h.parts.headers["host"], "other.example:8080");
        assert_eq!(h.parts.headers.get_all("host").iter().count(), 1);
        assert_eq!(h.parts.uri.path_and_query().unwrap().as_str(), "/p?q=1");
        let userinfo = parse_text("GET http://u@other.example/ HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(userinfo.err().map(|e| e.status().as_u16()), Some(400));
        // An origin-form target keeps the client's Host.
        let h = head("GET /p HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(h.parts.headers["host"], "a");
    }
}
