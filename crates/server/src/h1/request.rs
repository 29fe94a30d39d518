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
    let path = req.path.unwrap_or("");
    // A fragment is not part of a request-target (RFC 9112 §3.2); the URI parser would
    // drop it silently, and an upstream that reads the raw line would not.
    if path.contains('#') {
        return Err(bad("the request target has a fragment (`#`)"));
    }
    let target = span(buf, len, path.as_bytes());
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
    // The part of a chunked body that came with the head is checked now: if it is
    // malformed, the request is refused before any of it reaches an upstream, instead of
    // the upstream getting the head and a body cut short.
    if let Framing::Chunked(state) = framing {
        sluicegate_http1::check_buffered_chunks(state, &buf[..])
            .map_err(|e| bad(format!("malformed chunked request body: {e}")))?;
    }
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
    if facts.host_invalid {
        return Err(bad("the Host header field is not a host and port"));
    }
    if let (Some(_), Some(authority)) = (uri.scheme(), uri.authority()) {
        // Userinfo in an `http(s)` target is deprecated and a known phishing form (RFC 9110
        // §4.2.4): refused rather than passed on as part of `Host`.
        if authority.as_str().contains('@') {
            return Err(bad(
                "the request target has userinfo (`user@`) in its authority",
            ));
        }
        // The authority becomes `Host`, so it follows the `Host` rules (`http::Uri` takes
        // a port such as `808bca`).
        if !valid_host(authority.as_str().as_bytes()) {
            return Err(bad("the request target's authority is not a host and port"));
        }
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| bad("malformed authority in the request target"))?;
        headers.insert(header::HOST, host);
    } else if facts.hosts == 0 {
        // An HTTP/1.0 request without Host goes to the upstream as HTTP/1.1, which must
        // have one: empty, as for a target URI without an authority (RFC 9112 §3.2).
        headers.insert(header::HOST, HeaderValue::from_static(""));
    }
    Ok(())
}

/// Whether `v` is a `Host` field value: `uri-host [ ":" port ]` (RFC 9110 §7.2, RFC 3986
/// §3.2.2). RFC 9112 §3.2 makes any other value a 400. nginx refuses some (`a/b`, `a b`)
/// but passes `u@a` and `a:8x`; HAProxy passes all four on.
fn valid_host(v: &[u8]) -> bool {
    let (host, port) = if v.first() == Some(&b'[') {
        // An IP literal: IPv6 or IPvFuture, between brackets.
        let Some(end) = v.iter().position(|b| *b == b']') else {
            return false;
        };
        let inner = &v[1..end];
        if inner.is_empty()
            || !inner
                .iter()
                .all(|b| b == &b':' || is_unreserved_or_sub_delim(*b))
        {
            return false;
        }
        (&[][..], &v[end + 1..])
    } else {
        match v.iter().position(|b| *b == b':') {
            Some(colon) => (&v[..colon], &v[colon..]),
            None => (v, &[][..]),
        }
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    let mut i = 0;
    while i < host.len() {
        match host[i] {
            b'%' if host
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) =>
            {
                i += 3;
            }
            b if is_unreserved_or_sub_delim(b) => i += 1,
            _ => return false,
        }
    }
    port_ok
}

/// RFC 3986's `unreserved / sub-delims`: the characters of a host name.
fn is_unreserved_or_sub_delim(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b)
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
    /// `Content-Length` lines seen (all with one value, or `length_error` says otherwise).
    length_lines: u32,
    /// `Transfer-Encoding` was sent.
    te_seen: bool,
    /// `chunked` codings named, over every `Transfer-Encoding` line.
    chunked: u32,
    /// A coding other than `chunked` was named (or a line named none).
    other_coding: bool,
    close: bool,
    keep_alive: bool,
    upgrade_token: bool,
    upgrade_header: bool,
    /// The first `Expect` field asks for `100-continue`.
    expect_continue: bool,
    expect_seen: bool,
    /// `Host` fields seen.
    hosts: u32,
    /// A `Host` value that is not a host and port.
    host_invalid: bool,
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
            self.length_lines += 1;
        } else if *name == header::TRANSFER_ENCODING {
            self.te_seen = true;
            let mut named = false;
            // Empty list elements are allowed and ignored (RFC 9110 §5.6.1).
            for t in value
                .split(|b| *b == b',')
                .map(<[u8]>::trim_ascii)
                .filter(|t| !t.is_empty())
            {
                named = true;
                if t.eq_ignore_ascii_case(b"chunked") {
                    self.chunked += 1;
                } else {
                    self.other_coding = true;
                }
            }
            self.other_coding |= !named;
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
            self.host_invalid |= !valid_host(value.trim_ascii());
        } else if *name == header::EXPECT && !self.expect_seen {
            self.expect_seen = true;
            self.expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        }
    }

    /// The body's framing (RFC 9112 §6.3) and whether the connection must close after it.
    /// A `Content-Length` next to `Transfer-Encoding` is removed: it must not reach the
    /// upstream. Otherwise a malformed or conflicting one is a 400, and the same length on
    /// several lines goes on as one line (RFC 9110 §8.6), since an upstream may read two
    /// lines as two lengths and refuse, or pick one.
    ///
    /// `chunked` is the only transfer coding accepted, and only once: the gateway decodes
    /// chunked and nothing else, so a body sent with `gzip, chunked` would reach the upstream
    /// still compressed under a plain `chunked`; and chunked twice is forbidden (RFC 9112
    /// §6.1). RFC 9112 §6.1 suggests 501 for a coding the server does not know; this is a
    /// 400, like a malformed length. nginx (501) and HAProxy (422) refuse both too.
    fn framing(
        &self,
        version: Version,
        headers: &mut HeaderMap,
    ) -> Result<(Framing, bool), ProxyError> {
        if self.te_seen {
            if version == Version::HTTP_10 {
                return Err(bad(
                    "Transfer-Encoding is not allowed in an HTTP/1.0 request",
                ));
            }
            if self.other_coding || self.chunked != 1 {
                return Err(bad(
                    "the request's Transfer-Encoding must be `chunked`, once and alone",
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
        if self.length_lines > 1 {
            if let Some(first) = headers.get(header::CONTENT_LENGTH).cloned() {
                headers.insert(header::CONTENT_LENGTH, first);
            }
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
        let h = head("POST / HTTP/1.1\r\nTransfer-Encoding: , Chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked(ChunkState::Size));
        assert!(h.keep_alive);
    }

    #[test]
    fn passes_on_one_content_length_for_a_length_repeated_on_several_lines() {
        let h = head("POST / HTTP/1.1\r\nContent-Length: 5\r\nX: 1\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(5));
        assert_eq!(h.parts.headers.get_all("content-length").iter().count(), 1);
        assert_eq!(h.parts.headers["content-length"], "5");
    }

    #[test]
    fn accepts_chunked_once_and_alone_as_the_only_transfer_coding() {
        for te in [
            "gzip, chunked",
            "identity, chunked",
            "chunked, identity",
            "chunked, chunked",
            "xchunked",
            "",
        ] {
            let text = format!("POST / HTTP/1.1\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert_eq!(status(&text), 400, "{te:?}");
        }
        assert_eq!(
            status("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
    }

    #[test]
    fn refuses_a_host_that_is_not_a_host_and_port() {
        for host in [
            "a/b", "a b", "u@a", "a:8x", "a:80:80", "[::1", "[::1]x", "a%zz", "a\"b",
        ] {
            let text = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            assert_eq!(status(&text), 400, "{host:?}");
        }
        for host in [
            "a",
            "a:8080",
            "a:",
            "",
            "[::1]:80",
            "[v1.x]",
            "xn--d1a.example",
            "a%41b",
            "127.0.0.1",
        ] {
            let h = head(&format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n"));
            assert_eq!(h.parts.headers["host"], host);
        }
    }

    #[test]
    fn gives_an_http_1_0_request_without_host_an_empty_one() {
        let h = parse_text("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.parts.headers.get_all("host").iter().count(), 1);
        assert_eq!(h.parts.headers["host"], "");
        let h = parse_text("GET http://b/ HTTP/1.0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.parts.headers["host"], "b");
    }

    #[test]
    fn refuses_a_fragment_in_the_target() {
        assert_eq!(status("GET /a#frag HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("GET http://b/a?q#f HTTP/1.1\r\n\r\n"), 400);
    }

    #[test]
    fn refuses_a_request_whose_chunked_body_came_malformed_with_its_head() {
        let te = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        for body in [
            " 3\r\nabc\r\n0\r\n\r\n",
            "3;a\rb\r\nabc\r\n0\r\n\r\n",
            "3\nabc\r\n0\r\n\r\n",
            "3\r\nabcX\r\n0\r\n\r\n",
            "3x\r\nabc\r\n0\r\n\r\n",
            "10000000000000003\r\nabc\r\n0\r\n\r\n",
            "3\r\nabc\r\n0\r\nX-T: 1\n\r\n",
        ] {
            assert_eq!(status(&format!("{te}{body}")), 400, "{body:?}");
        }
        // What has arrived so far is fine, and what follows the body is the next request's.
        for body in [
            "3\r\nab",
            "3\r\nabc\r",
            "3;a=b\r\nabc\r\n0\r\n\r\nGARBAGE\n",
        ] {
            let mut buf = BytesMut::from(format!("{te}{body}").as_bytes());
            let h = parse(&mut buf).unwrap().unwrap();
            assert_eq!(h.framing, Framing::Chunked(ChunkState::Size), "{body:?}");
            assert_eq!(&buf[..], body.as_bytes());
        }
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
        // A transfer coding list split over two fields is read as one list.
        for (first, second) in [("chunked", "gzip"), ("gzip", "chunked")] {
            let text = format!(
                "POST / HTTP/1.1\r\nTransfer-Encoding: {first}\r\nTransfer-Encoding: {second}\r\n\r\n"
            );
            assert_eq!(status(&text), 400, "{text:?}");
        }
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
        // Found by the h1_request fuzz target: a port that is not digits became `Host`.
        for target in ["http://a:8x/", "http://example.com:808bca//0?"] {
            let bad_port = parse_text(&format!("GET {target} HTTP/1.1\r\nHost: other\r\n\r\n"));
            assert_eq!(
                bad_port.err().map(|e| e.status().as_u16()),
                Some(400),
                "{target}"
            );
        }
        // An origin-form target keeps the client's Host.
        let h = head("GET /p HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(h.parts.headers["host"], "a");
    }
}
