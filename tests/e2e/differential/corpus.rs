//! The requests sent through every proxy: ambiguous and malformed HTTP/1.1, after the
//! request smuggling families (CL.TE, TE.CL, TE.TE) and the rules of RFC 9112 that close
//! them, with a few valid requests as a baseline. Each is sent as it is, on a connection of
//! its own.
//!
//! A body that one reading of the framing would take as a second request carries
//! [`SMUGGLED`], so an upstream that received it shows two requests.

/// A request a lenient reading finds inside a body.
pub const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";

/// One request of the corpus.
pub struct Entry {
    /// A short name for the results table.
    pub name: &'static str,
    /// The bytes sent.
    pub bytes: Vec<u8>,
}

fn entry(name: &'static str, bytes: impl AsRef<[u8]>) -> Entry {
    Entry {
        name,
        bytes: bytes.as_ref().to_vec(),
    }
}

/// `POST /` with `Host: a`, the header lines `fields` (each ending in CRLF) and `body`.
fn post(fields: &str, body: &str) -> String {
    format!("POST / HTTP/1.1\r\nHost: a\r\n{fields}\r\n{body}")
}

/// `GET /` with `Host: a` and the header lines `fields`.
fn get(fields: &str) -> String {
    format!("GET / HTTP/1.1\r\nHost: a\r\n{fields}\r\n")
}

/// Every entry, in the order of the table.
pub fn entries() -> Vec<Entry> {
    // A chunked body that ends at once, followed by a request: what a reader that goes by
    // Transfer-Encoding sees when one that goes by Content-Length sees one body.
    let cl_te_body = format!("0\r\n\r\n{SMUGGLED}");
    let cl_te_len = cl_te_body.len();
    // One chunk that holds a request: what a reader that goes by Content-Length (4, the
    // chunk-size line) leaves behind as a second request when the other reads chunks.
    let te_cl_chunk = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    let long_value = "v".repeat(70 * 1024);
    let long_target = format!("/{}", "p".repeat(70 * 1024));
    vec![
        // Baseline: valid requests every proxy forwards.
        entry("get", get("")),
        entry("post-length", post("Content-Length: 3\r\n", "abc")),
        entry(
            "post-chunked",
            post("Transfer-Encoding: chunked\r\n", "3\r\nabc\r\n0\r\n\r\n"),
        ),
        // Content-Length and Transfer-Encoding together (CL.TE and TE.CL).
        entry(
            "cl-te",
            post(
                &format!("Content-Length: {cl_te_len}\r\nTransfer-Encoding: chunked\r\n"),
                &cl_te_body,
            ),
        ),
        entry(
            "te-cl",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
                &te_cl_chunk,
            ),
        ),
        entry(
            "cl-te-http10",
            format!(
                "POST / HTTP/1.0\r\nHost: a\r\nContent-Length: {cl_te_len}\r\n\
                 Transfer-Encoding: chunked\r\n\r\n{cl_te_body}"
            ),
        ),
        // Content-Length values.
        entry(
            "cl-duplicate-same",
            post("Content-Length: 3\r\nContent-Length: 3\r\n", "abc"),
        ),
        entry(
            "cl-duplicate-conflict",
            post("Content-Length: 3\r\nContent-Length: 5\r\n", "abcde"),
        ),
        entry("cl-list-same", post("Content-Length: 3,3\r\n", "abc")),
        entry(
            "cl-list-conflict",
            post("Content-Length: 3, 5\r\n", "abcde"),
        ),
        entry("cl-plus", post("Content-Length: +3\r\n", "abc")),
        entry("cl-minus", post("Content-Length: -1\r\n", "abc")),
        entry("cl-leading-space", post("Content-Length:   3\r\n", "abc")),
        entry(
            "cl-inner-space",
            post("Content-Length: 1 2\r\n", "abcdefghijkl"),
        ),
        entry("cl-hex", post("Content-Length: 0x3\r\n", "abc")),
        entry("cl-empty", post("Content-Length:\r\n", "abc")),
        entry(
            "cl-overflow",
            post("Content-Length: 18446744073709551619\r\n", "abc"),
        ),
        entry(
            "cl-zero-then-request",
            post("Content-Length: 0\r\n", SMUGGLED),
        ),
        // Transfer-Encoding values (TE.TE: one side finds chunked, the other does not).
        entry(
            "te-chunked-identity",
            post(
                "Transfer-Encoding: chunked, identity\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ),
        ),
        entry(
            "te-identity-chunked",
            post(
                "Transfer-Encoding: identity, chunked\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ),
        ),
        entry(
            "te-gzip-chunked",
            post(
                "Transfer-Encoding: gzip, chunked\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ),
        ),
        entry(
            "te-xchunked",
            post("Transfer-Encoding: xchunked\r\n", "3\r\nabc\r\n0\r\n\r\n"),
        ),
        entry(
            "te-uppercase",
            post("Transfer-Encoding: CHUNKED\r\n", "3\r\nabc\r\n0\r\n\r\n"),
        ),
        entry(
            "te-two-lines",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ),
        ),
        entry(
            "te-split-lines",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ),
        ),
        entry(
            "te-http10",
            "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
             3\r\nabc\r\n0\r\n\r\n",
        ),
        entry(
            "te-space-before-colon",
            post(
                "Transfer-Encoding : chunked\r\nContent-Length: 4\r\n",
                &te_cl_chunk,
            ),
        ),
        entry(
            "te-obs-fold",
            post(
                "Transfer-Encoding:\r\n chunked\r\nContent-Length: 4\r\n",
                &te_cl_chunk,
            ),
        ),
        entry(
            "te-vertical-tab",
            post(
                "Transfer-Encoding: \x0bchunked\r\nContent-Length: 4\r\n",
                &te_cl_chunk,
            ),
        ),
        // Chunk lines.
        entry(
            "chunk-size-overflow",
            post(
                "Transfer-Encoding: chunked\r\n",
                "10000000000000003\r\nabc\r\n0\r\n\r\n",
            ),
        ),
        entry(
            "chunk-size-leading-space",
            post("Transfer-Encoding: chunked\r\n", " 3\r\nabc\r\n0\r\n\r\n"),
        ),
        entry(
            "chunk-size-trailing-junk",
            post("Transfer-Encoding: chunked\r\n", "3x\r\nabc\r\n0\r\n\r\n"),
        ),
        entry(
            "chunk-ext-valid",
            post(
                "Transfer-Encoding: chunked\r\n",
                "3;name=\"v\";flag\r\nabc\r\n0;last\r\n\r\n",
            ),
        ),
        entry(
            "chunk-ext-bare-cr",
            post(
                "Transfer-Encoding: chunked\r\n",
                "3;a\rb\r\nabc\r\n0\r\n\r\n",
            ),
        ),
        entry(
            "chunk-bare-lf",
            post("Transfer-Encoding: chunked\r\n", "3\nabc\r\n0\r\n\r\n"),
        ),
        entry(
            "chunk-data-no-crlf",
            post("Transfer-Encoding: chunked\r\n", "3\r\nabcX\r\n0\r\n\r\n"),
        ),
        entry(
            "trailer-framing-fields",
            post(
                "Transfer-Encoding: chunked\r\n",
                "3\r\nabc\r\n0\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n",
            ),
        ),
        entry(
            "trailer-bare-lf",
            post(
                "Transfer-Encoding: chunked\r\n",
                "3\r\nabc\r\n0\r\nX-T: 1\n\r\n",
            ),
        ),
        // Header lines.
        entry("head-bare-lf", "GET / HTTP/1.1\nHost: a\nX-A: 1\n\n"),
        entry(
            "head-bare-cr",
            "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\rX-B: 2\r\n\r\n",
        ),
        entry("obs-fold", get("X-A: 1\r\n 2\r\n")),
        entry("space-before-colon", get("X-A : 1\r\n")),
        entry("empty-field-name", get(": x\r\n")),
        entry("nul-in-value", get("X-A: a\0b\r\n")),
        entry("ctl-in-value", get("X-A: a\x01b\r\n")),
        entry("del-in-value", get("X-A: a\x7fb\r\n")),
        entry(
            "obs-text-in-value",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: caf\xe9\r\n\r\n",
        ),
        entry("invalid-field-name", get("X/A: 1\r\n")),
        entry("leading-empty-line", format!("\r\n{}", get(""))),
        // Request lines.
        entry("method-invalid-token", "G(T / HTTP/1.1\r\nHost: a\r\n\r\n"),
        entry("method-lowercase", "get / HTTP/1.1\r\nHost: a\r\n\r\n"),
        entry(
            "target-absolute",
            "GET http://b/p HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        entry(
            "target-userinfo",
            "GET http://u:p@b/p HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        entry("target-asterisk", "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"),
        entry(
            "target-authority",
            "CONNECT b:443 HTTP/1.1\r\nHost: b:443\r\n\r\n",
        ),
        entry("target-fragment", "GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n"),
        entry("target-space", "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"),
        entry("target-ctl", "GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n"),
        entry("http09", "GET /\r\n"),
        entry("http20-line", "GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
        entry("http12-line", "GET / HTTP/1.2\r\nHost: a\r\n\r\n"),
        entry("version-lowercase", "GET / http/1.1\r\nHost: a\r\n\r\n"),
        // Host.
        entry("host-missing", "GET / HTTP/1.1\r\nX-A: 1\r\n\r\n"),
        entry("host-missing-http10", "GET / HTTP/1.0\r\n\r\n"),
        entry(
            "host-duplicate",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ),
        entry("host-port", "GET / HTTP/1.1\r\nHost: a:8080\r\n\r\n"),
        entry("host-empty", "GET / HTTP/1.1\r\nHost:\r\n\r\n"),
        entry("host-slash", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"),
        entry("host-space", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
        entry("host-userinfo", "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n"),
        entry("host-bad-port", "GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n"),
        // Expect, Upgrade, Connection.
        entry(
            "expect-continue",
            post("Expect: 100-continue\r\nContent-Length: 3\r\n", "abc"),
        ),
        entry("expect-continue-no-body", get("Expect: 100-continue\r\n")),
        entry(
            "expect-unknown",
            post("Expect: 100-continuex\r\nContent-Length: 3\r\n", "abc"),
        ),
        entry(
            "expect-http10",
            "POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
        ),
        entry("upgrade-without-connection", get("Upgrade: websocket\r\n")),
        entry(
            "upgrade-h2c",
            get("Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
                 HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"),
        ),
        entry(
            "connection-content-length",
            post("Connection: content-length\r\nContent-Length: 3\r\n", "abc"),
        ),
        entry(
            "connection-transfer-encoding",
            post(
                "Connection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n",
                "3\r\nabc\r\n0\r\n\r\n",
            ),
        ),
        entry("connection-host", get("Connection: host\r\n")),
        // Pipelines.
        entry(
            "pipelined-bodies",
            [
                post("Content-Length: 3\r\n", "abc"),
                post("Transfer-Encoding: chunked\r\n", "2\r\nde\r\n0\r\n\r\n"),
                get(""),
            ]
            .concat(),
        ),
        entry(
            "pipelined-after-bad-length",
            [
                post("Content-Length: 3\r\nContent-Length: 4\r\n", "abcd"),
                get(""),
            ]
            .concat(),
        ),
        // Lengths.
        entry("long-field", get(&format!("X-Long: {long_value}\r\n"))),
        entry(
            "long-target",
            format!("GET {long_target} HTTP/1.1\r\nHost: a\r\n\r\n"),
        ),
    ]
}
