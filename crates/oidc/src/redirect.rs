//! Where a login may send the browser afterwards (the `rd` parameter): a path on this site,
//! or an absolute URL on one of the configured origins. Anything else would make the gateway
//! an open redirector, handing a freshly logged-in user to a phishing page.
//!
//! Invariants: a target is accepted only when it has no control character, whitespace or
//! backslash, is at most [`MAX_TARGET_BYTES`] long, and stays safe when percent-decoded again
//! (up to [`DECODE_DEPTH`] times), since an application or framework behind the gateway may
//! decode it once more before using it. Browsers drop tabs and newlines inside URLs and read
//! `\` as `/` (WHATWG URL), so both count when a decoded target is judged.

/// The longest target accepted; longer ones are not links a user followed.
pub const MAX_TARGET_BYTES: usize = 2048;

/// How many extra rounds of percent-decoding a target must survive.
pub const DECODE_DEPTH: usize = 3;

/// `rd` (already percent-decoded once, as a query parameter) if it is a safe place to send
/// the browser after login, else `None`; non-ASCII characters come back percent-encoded. Safe is a path on this site (`/` then neither `/` nor
/// `\`), or an `http`/`https` URL without userinfo whose origin is one of `allowed_origins`
/// (`https://app.example.com`, `http://localhost:8080`).
pub fn safe_target(rd: &str, allowed_origins: &[String]) -> Option<String> {
    if rd.is_empty() || rd.len() > MAX_TARGET_BYTES {
        return None;
    }
    if rd
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '\\')
    {
        return None;
    }
    let allowed: Vec<Origin> = allowed_origins
        .iter()
        .filter_map(|o| parse_origin(o))
        .collect();
    let mut current = rd.to_owned();
    for _ in 0..=DECODE_DEPTH {
        if !is_safe(&current, &allowed) {
            return None;
        }
        if !current.contains('%') {
            break;
        }
        let decoded = percent_decode(&current);
        if decoded == current {
            break;
        }
        // What a browser would do with the decoded text before reading it as a URL.
        current = decoded
            .trim_matches(|c: char| c <= ' ')
            .chars()
            .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
            .collect();
    }
    Some(encode_non_ascii(rd))
}

/// `s` with every non-ASCII character percent-encoded (as UTF-8, as browsers send it), so
/// the target is always a valid `Location` header value.
fn encode_non_ascii(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// Checks an entry of the allowed origins, for configuration validation: `scheme://host`
/// with an optional port and nothing else.
pub fn check_origin(origin: &str) -> Result<(), String> {
    match parse_origin(origin) {
        Some(_) => Ok(()),
        None => Err(format!(
            "`{origin}` is not an origin (expected `https://host` or `https://host:port`)"
        )),
    }
}

/// Scheme, lowercase host and port (explicit or the scheme's default).
#[derive(PartialEq, Eq, Debug)]
struct Origin {
    https: bool,
    host: String,
    port: u16,
}

fn parse_origin(origin: &str) -> Option<Origin> {
    let (parsed, rest) = split_absolute(origin)?;
    matches!(rest, "" | "/").then_some(parsed)
}

/// Whether `target` is a path on this site or a URL on an allowed origin (structure only).
fn is_safe(target: &str, allowed: &[Origin]) -> bool {
    if let Some(rest) = target.strip_prefix('/') {
        return !rest.starts_with(['/', '\\']);
    }
    match split_absolute(target) {
        Some((origin, _)) => allowed.contains(&origin),
        None => false,
    }
}

/// Splits an absolute `http`/`https` URL into its origin and the rest (path, query,
/// fragment). `None` for other schemes, a missing `//`, userinfo, or a host or port that is
/// not plain ASCII.
fn split_absolute(url: &str) -> Option<(Origin, &str)> {
    let colon = url.find(':')?;
    let scheme = &url[..colon];
    let https = if scheme.eq_ignore_ascii_case("https") {
        true
    } else if scheme.eq_ignore_ascii_case("http") {
        false
    } else {
        return None;
    };
    let after = url[colon + 1..].strip_prefix("//")?;
    // WHATWG URL ends the authority at `/`, `\`, `?` or `#`. An `@` before that starts
    // userinfo, which hides the real host from a reader (`https://good.com@evil.com`); the
    // host and port checks below refuse it, as they refuse `%`, IPv6 literals and non-ASCII.
    let end = after.find(['/', '\\', '?', '#']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !host_ok {
        return None;
    }
    let port = match port {
        None => {
            if https {
                443
            } else {
                80
            }
        }
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            p.parse().ok()?
        }
        Some(_) => return None,
    };
    let origin = Origin {
        https,
        host: host.to_ascii_lowercase(),
        port,
    };
    Some((origin, rest))
}

/// One round of percent-decoding; `%` not followed by two hex digits stays as it is, and
/// bytes that do not make UTF-8 become U+FFFD.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        vec![
            "https://good.example.com".into(),
            "http://localhost:8080".into(),
            "https://App.Example.com:8443/".into(),
        ]
    }

    fn safe(rd: &str) -> bool {
        safe_target(rd, &allowed()).is_some()
    }

    #[test]
    fn accepts_paths_on_this_site() {
        for rd in [
            "/",
            "/dashboard",
            "/a/b?c=d&e=f#g",
            "/search?q=caf%C3%A9&next=%2Fhome",
            "/my%20docs/",
            "/a//b",
            "/?x=//evil.com",
            "/%3F//evil.com",
        ] {
            assert_eq!(safe_target(rd, &allowed()).as_deref(), Some(rd), "{rd}");
        }
    }

    #[test]
    fn percent_encodes_non_ascii_characters_of_a_target() {
        assert_eq!(
            safe_target("/caf\u{e9}/\u{ff0f}x", &allowed()).as_deref(),
            Some("/caf%C3%A9/%EF%BC%8Fx")
        );
    }

    #[test]
    fn accepts_urls_on_allowed_origins() {
        for rd in [
            "https://good.example.com",
            "https://good.example.com/",
            "https://good.example.com/path?q=1#top",
            "https://GOOD.example.COM/x",
            "HTTPS://good.example.com/x",
            "https://good.example.com:443/x",
            "http://localhost:8080/cb",
            "https://app.example.com:8443/x",
            "https://good.example.com?q=1",
        ] {
            assert!(safe(rd), "{rd}");
        }
    }

    #[test]
    fn rejects_protocol_relative_and_backslash_tricks() {
        for rd in [
            "//evil.com",
            "///evil.com",
            "/\\evil.com",
            "\\/evil.com",
            "\\\\evil.com",
            "/a\\b",
            "https://good.example.com\\@evil.com",
        ] {
            assert!(!safe(rd), "{rd}");
        }
    }

    #[test]
    fn rejects_other_schemes_and_malformed_urls() {
        for rd in [
            "javascript:alert(1)",
            "JavaScript:alert(1)",
            "data:text/html,x",
            "https:evil.com",
            "https:/evil.com",
            "https:///evil.com",
            "ftp://good.example.com/",
            "dashboard",
            "good.example.com/x",
            "?next=/",
            "#frag",
        ] {
            assert!(!safe(rd), "{rd}");
        }
    }

    #[test]
    fn rejects_urls_whose_host_is_not_allowed_or_hidden() {
        for rd in [
            "https://evil.com/",
            "https://good.example.com@evil.com",
            "https://good.example.com:443@evil.com",
            "https://user:pass@good.example.com/",
            "https://evil.com#@good.example.com",
            "https://evil.com?@good.example.com",
            "https://good.example.com.evil.com/",
            "https://evil.com/good.example.com",
            "https://good.example.com./",
            "https://xgood.example.com/",
            "https://good.example.com%2eevil.com/",
            "https://g\u{f6}od.example.com/",
            "https://[::1]/",
        ] {
            assert!(!safe(rd), "{rd}");
        }
    }

    #[test]
    fn rejects_a_different_port_or_scheme() {
        for rd in [
            "https://good.example.com:8443/",
            "https://good.example.com:/",
            "https://good.example.com:99999/",
            "https://good.example.com:-1/",
            "http://good.example.com/",
            "https://localhost:8080/",
            "http://localhost/",
            "https://app.example.com/",
        ] {
            assert!(!safe(rd), "{rd}");
        }
    }

    #[test]
    fn rejects_control_characters_and_whitespace_anywhere() {
        for rd in [
            "/a b",
            " /a",
            "/a\t",
            "/\t/evil.com",
            "/a\r\nSet-Cookie: x=y",
            "/a\0",
            "/a\u{7f}",
            "/a\u{85}",
            "/a\u{a0}",
            "/a\u{2028}",
            "https://good.example.com/\n",
        ] {
            assert!(!safe(rd), "{rd:?}");
        }
    }

    #[test]
    fn rejects_what_another_decoding_would_make_unsafe() {
        for rd in [
            "/%2F%2Fevil.com",
            "/%2f/evil.com",
            "/%5Cevil.com",
            "/%5cevil.com",
            "%2F%2Fevil.com",
            "/%09/evil.com",
            "/%0A/evil.com",
            "/%252F%252Fevil.com",
            "/%25252F/evil.com",
            "https://good.example.com%2F@evil.com",
            "https://good.example.com%40evil.com/",
            "%68ttps://evil.com",
        ] {
            assert!(!safe(rd), "{rd}");
        }
    }

    #[test]
    fn rejects_empty_and_overlong_targets() {
        assert!(!safe(""));
        let longest = format!("/{}", "a".repeat(MAX_TARGET_BYTES - 1));
        assert!(safe(&longest));
        assert!(!safe(&format!("{longest}a")));
    }

    #[test]
    fn rejects_every_absolute_url_without_allowed_origins() {
        assert!(safe_target("https://good.example.com/", &[]).is_none());
        assert!(safe_target("/ok", &[]).is_some());
        let bad = vec![
            "not an origin".to_string(),
            "https://a.com/path".to_string(),
        ];
        assert!(safe_target("https://a.com/path", &bad).is_none());
    }

    #[test]
    fn checks_configured_origins() {
        assert!(check_origin("https://app.example.com").is_ok());
        assert!(check_origin("http://localhost:8080").is_ok());
        assert!(check_origin("https://app.example.com/").is_ok());
        for bad in [
            "app.example.com",
            "https://app.example.com/path",
            "https://user@app.example.com",
            "ftp://app.example.com",
            "https://",
            "https://app.example.com?x",
        ] {
            assert!(check_origin(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn decodes_percent_escapes_once() {
        assert_eq!(percent_decode("%2F%2f%41"), "//A");
        assert_eq!(percent_decode("%252F"), "%2F");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%C3%A9"), "\u{e9}");
        assert_eq!(percent_decode("%FF"), "\u{fffd}");
    }
}
