//! An upstream response's header block kept as the bytes that arrived. When nothing on
//! the way reads or changes the headers (no header or body filter, an HTTP/1.1 client),
//! the lines a proxy passes on are copied to the client as they are, in runs, instead of
//! building a header map and encoding it again: about a sixth of the proxy's user-space
//! CPU per plain request. Everything else builds the map with [`RawHeaders::to_map`].
//!
//! Invariants:
//! - a line is passed through only if it is not hop-by-hop (RFC 9110 §7.6.1) and not
//!   `X-Request-Id` (the gateway sets its own);
//! - a block that needs more than dropping whole lines (headers named in `Connection`,
//!   conflicting or doubled framing headers, a status or method without a body) is never
//!   passed through: [`RawHeaders::passthrough`] says so, and the map is built instead;
//! - lines go out byte for byte only when every line of the block ends in exactly `CRLF`
//!   after its value; otherwise each passed line is written again as `name: value CRLF`.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use super::{parse_length, ChunkState, Framing};

/// One header line: offsets into the head.
#[derive(Clone, Copy)]
struct Field {
    name: u32,
    name_end: u32,
    value: u32,
    value_end: u32,
    /// Hop-by-hop (or the upstream's request id): never passed to the client, but part
    /// of the map (whose users strip it as the map path always has).
    hop: bool,
    /// Removed or replaced by a header filter: in neither.
    removed: bool,
}

/// A parsed response header block, with what the gateway needs to know about it. The
/// default has no lines (a placeholder while a filter holds the real block).
#[derive(Default)]
pub struct RawHeaders {
    head: Bytes,
    fields: Vec<Field>,
    /// Every line is `name ":" OWS value CRLF`, so runs of lines can be copied whole.
    contiguous: bool,
    passthrough: bool,
    has_date: bool,
    content_length: Option<u64>,
    /// The gateway's `X-Request-Id`, in place of the upstream's.
    request_id: Option<HeaderValue>,
}

/// What [`RawBuilder::field`] found out about the block so far.
#[derive(Default)]
struct Facts {
    has_date: bool,
    content_length: Option<u64>,
    length_lines: u32,
    /// The last transfer coding named (RFC 9112 §6.3: chunked only if last).
    te_chunked: Option<bool>,
    close: bool,
    keep_alive: bool,
    /// `Connection` names a header, which then is hop-by-hop too.
    names_headers: bool,
}

/// Collects the fields of a head while the parser still borrows the read buffer.
pub struct RawBuilder {
    base: usize,
    fields: Vec<Field>,
    facts: Facts,
}

/// The result of [`RawBuilder::finish`].
pub struct ParsedHead {
    /// The header block.
    pub headers: RawHeaders,
    /// How the body is delimited.
    pub framing: Framing,
    /// Whether the message allows another one on its connection (`Connection` tokens and
    /// version, not the framing).
    pub keep_alive: bool,
}

impl RawBuilder {
    /// A builder for a head that starts at `base` (the parser's buffer) with `n` fields.
    pub fn new(base: &[u8], n: usize) -> Self {
        RawBuilder {
            base: base.as_ptr() as usize,
            fields: Vec::with_capacity(n),
            facts: Facts::default(),
        }
    }

    /// Records one field; `name` and `value` are slices of the buffer given to `new`.
    pub fn field(&mut self, name: &[u8], value: &[u8]) -> Result<(), String> {
        let base = self.base;
        let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        let hop = match name.len() {
            2 => name.eq_ignore_ascii_case(b"te"),
            4 => {
                self.facts.has_date |= name.eq_ignore_ascii_case(b"date");
                false
            }
            7 => name.eq_ignore_ascii_case(b"trailer") || name.eq_ignore_ascii_case(b"upgrade"),
            10 if name.eq_ignore_ascii_case(b"connection") => {
                self.connection(value);
                true
            }
            10 => name.eq_ignore_ascii_case(b"keep-alive"),
            12 => name.eq_ignore_ascii_case(b"x-request-id"),
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                let n = parse_length(value)
                    .ok_or_else(|| "the upstream sent an invalid Content-Length".to_string())?;
                if self.facts.content_length.is_some_and(|first| first != n) {
                    return Err("the upstream sent conflicting Content-Length headers".into());
                }
                self.facts.content_length = Some(n);
                self.facts.length_lines += 1;
                false
            }
            16 => name.eq_ignore_ascii_case(b"proxy-connection"),
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                let last = value
                    .split(|b| *b == b',')
                    .map(|t| t.trim_ascii())
                    .rfind(|t| !t.is_empty());
                if let Some(t) = last {
                    self.facts.te_chunked = Some(t.eq_ignore_ascii_case(b"chunked"));
                } else if self.facts.te_chunked.is_none() {
                    self.facts.te_chunked = Some(false);
                }
                true
            }
            _ => false,
        };
        self.fields.push(Field {
            name: at(name),
            name_end: at(name) + name.len() as u32,
            value: at(value),
            value_end: at(value) + value.len() as u32,
            hop,
            removed: false,
        });
        Ok(())
    }

    fn connection(&mut self, value: &[u8]) {
        for token in value.split(|b| *b == b',').map(|t| t.trim_ascii()) {
            if token.eq_ignore_ascii_case(b"close") {
                self.facts.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.facts.keep_alive = true;
            } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"upgrade") {
                self.facts.names_headers = true;
            }
        }
    }

    /// The block of `head` (the whole head, status line to the empty line), its framing
    /// (RFC 9112 §6.3) for a response with `status` to a `method` request, and keep-alive.
    pub fn finish(
        self,
        head: Bytes,
        method: &Method,
        status: StatusCode,
        http10: bool,
    ) -> ParsedHead {
        let facts = self.facts;
        let bodiless = *method == Method::HEAD || super::status_without_body(status);
        let framing = if bodiless {
            Framing::Length(0)
        } else {
            match (facts.te_chunked, facts.content_length) {
                (Some(true), _) => Framing::Chunked(ChunkState::Size),
                (Some(false), _) | (None, None) => Framing::Close,
                (None, Some(n)) => Framing::Length(n),
            }
        };
        // Transfer-Encoding next to Content-Length (RFC 9112 §6.3): the coding frames the
        // body, the length lines are not passed on, and the connection is not used again
        // (the upstream or something before it may frame the next message otherwise).
        let ambiguous = facts.te_chunked.is_some() && facts.length_lines > 0;
        let mut fields = self.fields;
        if ambiguous {
            for f in &mut fields {
                let name = head.get(f.name as usize..f.name_end as usize);
                if name.is_some_and(|n| n.eq_ignore_ascii_case(b"content-length")) {
                    f.removed = true;
                }
            }
        }
        let keep_alive = !ambiguous
            && if http10 {
                facts.keep_alive && !facts.close
            } else {
                !facts.close
            };
        let rebuilt = bodiless || facts.names_headers || facts.length_lines > 1 || ambiguous;
        let contiguous = contiguous(&head, &fields);
        ParsedHead {
            headers: RawHeaders {
                head,
                fields,
                contiguous,
                passthrough: !rebuilt,
                has_date: facts.has_date,
                content_length: facts.content_length.filter(|_| facts.te_chunked.is_none()),
                request_id: None,
            },
            framing,
            keep_alive,
        }
    }
}

/// Whether each field's line ends right after its value with `CRLF` and the next line
/// (or the head's final `CRLF`) follows at once.
fn contiguous(head: &[u8], fields: &[Field]) -> bool {
    let end = head.len().saturating_sub(2);
    let ends_clean = head.ends_with(b"\r\n\r\n") || (fields.is_empty() && head.ends_with(b"\r\n"));
    if !ends_clean {
        return false;
    }
    fields.iter().enumerate().all(|(i, f)| {
        let next = fields.get(i + 1).map_or(end, |n| n.name as usize);
        head.get(f.value_end as usize..next) == Some(b"\r\n".as_slice())
    })
}

impl RawHeaders {
    /// Whether the lines may go to the client as they are (see the module invariants).
    pub fn passthrough(&self) -> bool {
        self.passthrough
    }

    /// Whether the block has a `Date` line.
    pub fn has_date(&self) -> bool {
        self.has_date
    }

    /// The declared `Content-Length`, unless a `Transfer-Encoding` overrides it.
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    /// Drops every line named `name` (a header filter removing or replacing it).
    pub fn remove(&mut self, name: &HeaderName) {
        let wanted = name.as_str().as_bytes();
        for f in &mut self.fields {
            if self.head[f.name as usize..f.name_end as usize].eq_ignore_ascii_case(wanted) {
                f.removed = true;
            }
        }
        if *name == http::header::CONTENT_LENGTH {
            self.content_length = None;
        } else if *name == http::header::DATE {
            self.has_date = false;
        }
    }

    /// Sets the `X-Request-Id` written after the passed lines (the upstream's own is never
    /// passed).
    pub fn set_request_id(&mut self, id: HeaderValue) {
        self.request_id = Some(id);
    }

    /// Moves every line still present into `headers`, before the headers already there
    /// (those a filter added while the lines were raw); afterwards no line is left to
    /// pass. For a filter that turns out to need the whole map after all.
    pub fn merge_into(&mut self, headers: &mut HeaderMap) -> Result<(), String> {
        let mut map = self.to_map()?;
        let mut name = None;
        for (n, value) in std::mem::take(headers) {
            if n.is_some() {
                name = n;
            }
            if let Some(n) = &name {
                map.append(n.clone(), value);
            }
        }
        *headers = map;
        for f in &mut self.fields {
            f.removed = true;
        }
        self.content_length = None;
        self.has_date = false;
        Ok(())
    }

    /// Every line not removed by a filter, as a header map (values share the head's
    /// buffer).
    pub fn to_map(&self) -> Result<HeaderMap, String> {
        // Room for the few headers the gateway adds to a response (X-Request-Id, filters).
        let mut map = HeaderMap::with_capacity(self.fields.len() + 4);
        for f in self.fields.iter().filter(|f| !f.removed) {
            let name_bytes = &self.head[f.name as usize..f.name_end as usize];
            let name = HeaderName::from_bytes(name_bytes).map_err(|_| {
                format!(
                    "the upstream sent an invalid header name `{}`",
                    String::from_utf8_lossy(name_bytes)
                )
            })?;
            let value = HeaderValue::from_maybe_shared(
                self.head.slice(f.value as usize..f.value_end as usize),
            )
            .map_err(|_| format!("the upstream sent an invalid value for `{name}`"))?;
            map.append(name, value);
        }
        Ok(map)
    }

    /// Appends the lines passed to the client (runs of consecutive lines in one copy
    /// each), then the request id set by [`RawHeaders::set_request_id`].
    pub fn write_passed(&self, out: &mut Vec<u8>) {
        self.write_lines(out);
        if let Some(id) = &self.request_id {
            out.extend_from_slice(b"x-request-id: ");
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    fn write_lines(&self, out: &mut Vec<u8>) {
        if !self.contiguous {
            for f in self.fields.iter().filter(|f| !f.hop && !f.removed) {
                out.extend_from_slice(&self.head[f.name as usize..f.name_end as usize]);
                out.extend_from_slice(b": ");
                out.extend_from_slice(&self.head[f.value as usize..f.value_end as usize]);
                out.extend_from_slice(b"\r\n");
            }
            return;
        }
        let mut run: Option<usize> = None;
        for f in &self.fields {
            match (f.hop || f.removed, run) {
                (false, None) => run = Some(f.name as usize),
                (true, Some(start)) => {
                    out.extend_from_slice(&self.head[start..f.name as usize]);
                    run = None;
                }
                _ => {}
            }
        }
        if let Some(start) = run {
            out.extend_from_slice(&self.head[start..self.head.len() - 2]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, method: Method) -> Result<ParsedHead, String> {
        let bytes = Bytes::copy_from_slice(text.as_bytes());
        let mut slots = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut slots);
        let len = match resp.parse(&bytes) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("{other:?}"),
        };
        let mut b = RawBuilder::new(&bytes, resp.headers.len());
        for h in resp.headers.iter() {
            b.field(h.name.as_bytes(), h.value)?;
        }
        let status = StatusCode::from_u16(resp.code.unwrap()).unwrap();
        let http10 = resp.version == Some(0);
        Ok(b.finish(bytes.slice(..len), &method, status, http10))
    }

    fn passed(p: &ParsedHead) -> String {
        let mut out = Vec::new();
        p.headers.write_passed(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn passes_end_to_end_lines_and_drops_hop_by_hop_ones() {
        let p = parse(
            "HTTP/1.1 200 OK\r\nServer: origin\r\nConnection: keep-alive\r\nContent-Type: text/plain\r\nKeep-Alive: timeout=5\r\nX-Request-Id: theirs\r\nContent-Length: 3\r\n\r\nabc",
            Method::GET,
        )
        .unwrap();
        assert!(p.headers.passthrough());
        assert!(p.keep_alive);
        assert_eq!(p.framing, Framing::Length(3));
        assert_eq!(p.headers.content_length(), Some(3));
        assert!(!p.headers.has_date());
        assert_eq!(
            passed(&p),
            "Server: origin\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
        );
        let mut p = p;
        p.headers.set_request_id(HeaderValue::from_static("ours"));
        assert!(passed(&p).ends_with("Content-Length: 3\r\nx-request-id: ours\r\n"));
        p.headers.remove(&http::header::SERVER);
        p.headers.remove(&http::header::CONTENT_LENGTH);
        assert_eq!(p.headers.content_length(), None);
        assert_eq!(
            passed(&p),
            "Content-Type: text/plain\r\nx-request-id: ours\r\n"
        );
        // The map has every line a filter left, hop-by-hop ones included.
        let map = p.headers.to_map().unwrap();
        assert_eq!(map.len(), 4);
        assert_eq!(map["x-request-id"], "theirs");
    }

    #[test]
    fn merges_the_remaining_lines_before_what_a_filter_added() {
        let mut p = parse(
            "HTTP/1.1 200 OK\r\nX-A: 1\r\nX-B: 2\r\nDate: d\r\nContent-Length: 0\r\n\r\n",
            Method::GET,
        )
        .unwrap();
        let mut added = HeaderMap::new();
        p.headers.remove(&HeaderName::from_static("x-b"));
        added.insert("x-b", HeaderValue::from_static("new"));
        added.append("x-a", HeaderValue::from_static("second"));
        p.headers.merge_into(&mut added).unwrap();
        let a: Vec<_> = added.get_all("x-a").iter().collect();
        assert_eq!(a, ["1", "second"]);
        assert_eq!(added["x-b"], "new");
        assert_eq!(added.len(), 5);
        assert_eq!(passed(&p), "");
        assert!(!p.headers.has_date());
        assert_eq!(p.headers.content_length(), None);
    }

    #[test]
    fn rewrites_lines_that_do_not_end_in_crlf_after_their_value() {
        let p = parse(
            "HTTP/1.1 200 OK\nServer: origin  \nDate: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            Method::GET,
        )
        .unwrap();
        assert!(p.headers.passthrough());
        assert!(p.headers.has_date());
        assert_eq!(p.framing, Framing::Chunked(ChunkState::Size));
        assert_eq!(p.headers.content_length(), None);
        assert_eq!(passed(&p), "Server: origin\r\nDate: x\r\n");
    }

    #[test]
    fn builds_the_map_instead_when_lines_cannot_just_be_dropped() {
        let named = parse(
            "HTTP/1.1 200 OK\r\nConnection: x-private\r\nX-Private: 1\r\nContent-Length: 0\r\n\r\n",
            Method::GET,
        )
        .unwrap();
        assert!(!named.headers.passthrough());
        let both = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            Method::GET,
        )
        .unwrap();
        assert!(!both.headers.passthrough());
        assert_eq!(both.framing, Framing::Chunked(ChunkState::Size));
        assert!(!both.keep_alive, "not reused after ambiguous framing");
        let map = both.headers.to_map().unwrap();
        assert!(map.get("content-length").is_none(), "{map:?}");
        let doubled = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            Method::GET,
        )
        .unwrap();
        assert!(!doubled.headers.passthrough());
        let head = parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", Method::HEAD).unwrap();
        assert!(!head.headers.passthrough());
        assert_eq!(head.framing, Framing::Length(0));
        let not_modified = parse("HTTP/1.1 304 Not Modified\r\n\r\n", Method::GET).unwrap();
        assert!(!not_modified.headers.passthrough());
    }

    #[test]
    fn refuses_bad_and_conflicting_lengths_and_frames_unknown_codings_by_close() {
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n", Method::GET).is_err());
        assert!(parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            Method::GET
        )
        .is_err());
        let gzip = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            Method::GET,
        )
        .unwrap();
        assert_eq!(gzip.framing, Framing::Close);
        let none = parse("HTTP/1.0 200 OK\r\n\r\n", Method::GET).unwrap();
        assert_eq!(none.framing, Framing::Close);
        assert!(!none.keep_alive);
        assert_eq!(passed(&none), "");
        let ten = parse(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            Method::GET,
        )
        .unwrap();
        assert!(ten.keep_alive);
    }
}
