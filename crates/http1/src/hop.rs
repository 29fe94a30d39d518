//! Hop-by-hop headers (RFC 9110 §7.6.1): the ones a proxy must not forward, and those a
//! `Connection` header names.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those named in `Connection`.
/// With `keep_upgrade`, `Connection: upgrade` and `Upgrade` are kept for the upstream.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    strip(headers, keep_upgrade, false);
}

/// [`strip_hop_by_hop`] for a request to an HTTP/2 upstream: `TE: trailers` survives (gRPC
/// servers need it to know the client reads trailers; it is the one `TE` value HTTP/2
/// allows, RFC 9113 §8.2.2). Costs nothing more when the request has no `TE`.
pub fn strip_hop_by_hop_request(headers: &mut HeaderMap, keep_upgrade: bool) {
    strip(headers, keep_upgrade, true);
}

fn strip(headers: &mut HeaderMap, keep_upgrade: bool, keep_te_trailers: bool) {
    // One pass over the names (no hashing) finds which hop-by-hop headers are present;
    // only those are removed. Most requests have none, most responses only `Connection`.
    let fixed: [&HeaderName; 7] = [
        &header::CONNECTION,
        &header::UPGRADE,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
    ];
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(i) = fixed.iter().position(|f| *f == name) {
            present |= 1 << i;
        }
    }
    if present == 0 && !keep_upgrade {
        return;
    }
    // Index of `TE` in `fixed`; read before `Connection: TE` removes it.
    const TE: usize = 4;
    let te_trailers = keep_te_trailers && present & (1 << TE) != 0 && asks_for_trailers(headers);
    if present & 1 != 0 {
        // Headers named in `Connection` are hop-by-hop too (its usual tokens are not names),
        // except `Host`: it is meant for every recipient (RFC 9110 §7.6.1 forbids naming
        // such a field), and an HTTP/1.1 request without it is invalid (RFC 9112 §3.2), so
        // `Connection: host` would turn a valid request into one each upstream reads its
        // own way. nginx and HAProxy keep it too.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| {
                !t.eq_ignore_ascii_case("keep-alive")
                    && !t.eq_ignore_ascii_case("close")
                    && !t.eq_ignore_ascii_case("upgrade")
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .filter(|n| *n != header::HOST)
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for (i, name) in fixed.iter().enumerate() {
        let is_upgrade_pair = i < 2;
        if present & (1 << i) != 0 && !(keep_upgrade && is_upgrade_pair) {
            headers.remove(*name);
        }
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Whether any `TE` line lists the `trailers` token.
fn asks_for_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(lines: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in lines {
            h.append(*name, HeaderValue::from_static(value));
        }
        h
    }

    #[test]
    fn removes_the_headers_connection_names_but_never_host() {
        let mut h = headers(&[
            ("host", "a"),
            ("connection", "Host, x-drop"),
            ("x-drop", "1"),
            ("x-keep", "1"),
            ("te", "trailers"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["host"], "a");
        assert_eq!(h["x-keep"], "1");
        assert!(
            !h.contains_key("x-drop") && !h.contains_key("connection") && !h.contains_key("te")
        );
    }
}
