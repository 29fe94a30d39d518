//! Reading, setting, chunking and stripping cookies (RFC 6265).
//!
//! A value longer than [`CHUNK`] is set as numbered cookies `name.0`, `name.1`, …; a short
//! one as `name` alone. Whenever a value is set, every `name` or `name.K` the request carried
//! that the new value does not use is expired, so stale chunks never join a new value.
//!
//! Invariants: a `Set-Cookie` built here never carries a name, value or attribute that could
//! add attributes of its own (an invalid one sets nothing); the plugin checks names and
//! attributes when its configuration loads ([`valid_name`], [`Attrs::validate`]).

use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};

/// The largest value set as one cookie. Browsers keep at least 4096 bytes per cookie, name
/// and attributes included (RFC 6265 §6.1); 3800 leaves room for both.
pub const CHUNK: usize = 3800;

/// The most chunks one value may take. 8 × 3800 bytes is already more than many servers
/// accept in all request headers together.
pub const MAX_CHUNKS: usize = 8;

/// `SameSite` (RFC 6265bis §4.1.2.7).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SameSite {
    /// Sent on top-level navigations from other sites: what a login cookie needs, since the
    /// provider's redirect back is one.
    #[default]
    Lax,
    /// Never sent from other sites.
    Strict,
    /// Always sent; browsers require `Secure` with it.
    None,
}

/// The attributes of a cookie.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attrs {
    /// `Path`.
    pub path: String,
    /// `Domain`; `None` makes a host-only cookie.
    pub domain: Option<String>,
    /// `Secure`.
    pub secure: bool,
    /// `HttpOnly`.
    pub http_only: bool,
    /// `SameSite`.
    pub same_site: SameSite,
    /// `Max-Age` in seconds; `None` makes a cookie that ends with the browser session.
    pub max_age: Option<i64>,
}

impl Default for Attrs {
    fn default() -> Attrs {
        Attrs {
            path: "/".into(),
            domain: None,
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
            max_age: None,
        }
    }
}

impl Attrs {
    /// Checks that a cookie `name` with these attributes can be set and that browsers will
    /// keep it, returning every problem found.
    pub fn validate(&self, name: &str) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if !valid_name(name) {
            errors.push(format!(
                "`{name}` is not a valid cookie name (RFC 6265 token)"
            ));
        }
        if !self.path.starts_with('/') || !valid_path(&self.path) {
            errors.push(
                "the cookie path must start with `/` and be printable ASCII without `;`".into(),
            );
        }
        if let Some(domain) = &self.domain {
            if !valid_domain(domain) {
                errors.push(format!("`{domain}` is not a valid cookie domain"));
            }
        }
        if self.same_site == SameSite::None && !self.secure {
            errors
                .push("SameSite=None cookies must be Secure (browsers drop them otherwise)".into());
        }
        let secure_prefix = name.starts_with("__Secure-") || name.starts_with("__Host-");
        if secure_prefix && !self.secure {
            errors.push(format!("`{name}` must be Secure because of its prefix"));
        }
        if name.starts_with("__Host-") && (self.domain.is_some() || self.path != "/") {
            errors.push(format!(
                "`{name}` must have Path=/ and no Domain because of its prefix"
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// Whether `name` is a cookie name: an RFC 2616 token (RFC 6265 §4.1.1).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_graphic()
                && !matches!(
                    b,
                    b'(' | b')'
                        | b'<'
                        | b'>'
                        | b'@'
                        | b','
                        | b';'
                        | b':'
                        | b'\\'
                        | b'"'
                        | b'/'
                        | b'['
                        | b']'
                        | b'?'
                        | b'='
                        | b'{'
                        | b'}'
                )
        })
}

/// Whether `value` is a cookie value: `*cookie-octet` unquoted (RFC 6265 §4.1.1).
pub fn valid_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b',' | b';' | b'\\'))
}

fn valid_path(path: &str) -> bool {
    path.bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b';')
}

fn valid_domain(domain: &str) -> bool {
    let domain = domain.strip_prefix('.').unwrap_or(domain);
    !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Whether `cookie` is `name` or one of its chunks `name.<digits>`.
pub fn is_named(cookie: &str, name: &str) -> bool {
    match cookie.strip_prefix(name) {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix('.')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    }
}

/// How many characters follow the prefix in a per-login cookie name (`{prefix}_{id}`).
pub const PREFIXED_ID_CHARS: usize = 12;

/// Whether `cookie` is `{prefix}_` followed by exactly [`PREFIXED_ID_CHARS`] base64url
/// characters: the per-login cookies (`crate::session::login_cookie_name`).
pub fn is_prefixed(cookie: &str, prefix: &str) -> bool {
    cookie
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|id| {
            id.len() == PREFIXED_ID_CHARS
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Every `name=value` pair of every `Cookie` header, trimmed, as bytes (a header may hold
/// other sites' non-UTF-8 cookies; ours are ASCII). Pairs without `=` are left out.
fn pairs(headers: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|h| h.as_bytes().split(|&b| b == b';'))
        .filter_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            Some((pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii()))
        })
}

/// The value of the first cookie `name` in the request's `Cookie` headers, without the
/// quotes RFC 6265 allows around it.
pub fn get<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let (_, value) = pairs(headers).find(|(n, _)| *n == name.as_bytes())?;
    let value = match value {
        [b'"', inner @ .., b'"'] => inner,
        _ => value,
    };
    std::str::from_utf8(value).ok()
}

/// The value set by [`set_chunked`]: `name` if present, else `name.0`, `name.1`, … joined,
/// up to the first one missing (at most [`MAX_CHUNKS`]).
pub fn get_chunked(headers: &HeaderMap, name: &str) -> Option<String> {
    if let Some(value) = get(headers, name) {
        return Some(value.to_owned());
    }
    let mut joined: Option<String> = None;
    for k in 0..MAX_CHUNKS {
        let Some(chunk) = get(headers, &chunk_name(name, k)) else {
            break;
        };
        joined.get_or_insert_with(String::new).push_str(chunk);
    }
    joined
}

fn chunk_name(name: &str, k: usize) -> String {
    format!("{name}.{k}")
}

/// The `Set-Cookie` value setting `name` to `value` with `attrs`. Sets nothing (an empty
/// header, which browsers ignore) when the name, value, path or domain is invalid.
pub fn set(name: &str, value: &str, attrs: &Attrs) -> HeaderValue {
    build(name, value, attrs, attrs.max_age)
}

fn expire(name: &str, attrs: &Attrs) -> HeaderValue {
    // The same Path, Domain and Secure as when set, or the browser keeps the original
    // (and rejects a `__Host-` or `__Secure-` cookie without Secure).
    build(name, "", attrs, Some(0))
}

fn build(name: &str, value: &str, attrs: &Attrs, max_age: Option<i64>) -> HeaderValue {
    let domain_ok = attrs.domain.as_deref().is_none_or(valid_domain);
    if !valid_name(name) || !valid_value(value) || !valid_path(&attrs.path) || !domain_ok {
        return HeaderValue::from_static("");
    }
    let mut s = format!("{name}={value}; Path={}", attrs.path);
    if let Some(domain) = &attrs.domain {
        s.push_str("; Domain=");
        s.push_str(domain);
    }
    if let Some(age) = max_age {
        s.push_str(&format!("; Max-Age={age}"));
    }
    if attrs.secure {
        s.push_str("; Secure");
    }
    if attrs.http_only {
        s.push_str("; HttpOnly");
    }
    s.push_str(match attrs.same_site {
        SameSite::Lax => "; SameSite=Lax",
        SameSite::Strict => "; SameSite=Strict",
        SameSite::None => "; SameSite=None",
    });
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The names of the cookies in `request` that are `name` or one of its chunks.
fn present<'a>(request: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> {
    pairs(request)
        .filter_map(|(n, _)| std::str::from_utf8(n).ok())
        .filter(move |n| is_named(n, name))
}

/// The `Set-Cookie` values storing `value` under `name` (chunked when longer than
/// [`CHUNK`]), and expiring every `name` or `name.K` in `request` that it no longer uses.
/// A value that cannot be stored (invalid, or over [`MAX_CHUNKS`] chunks) expires them all
/// instead, as [`clear_chunked`]: a lost session is better than a corrupt one.
pub fn set_chunked(
    name: &str,
    value: &str,
    attrs: &Attrs,
    request: &HeaderMap,
) -> Vec<HeaderValue> {
    if !valid_value(value) || value.len() > CHUNK * MAX_CHUNKS {
        return clear_chunked(name, attrs, request);
    }
    let mut used = Vec::new();
    let mut out = Vec::new();
    if value.len() <= CHUNK {
        out.push(set(name, value, attrs));
        used.push(name.to_owned());
    } else {
        // A valid value is ASCII, so every byte offset is a char boundary.
        for (k, chunk) in value.as_bytes().chunks(CHUNK).enumerate() {
            let chunk_name = chunk_name(name, k);
            out.push(set(
                &chunk_name,
                std::str::from_utf8(chunk).unwrap_or(""),
                attrs,
            ));
            used.push(chunk_name);
        }
    }
    let mut expired: Vec<&str> = Vec::new();
    for stale in present(request, name) {
        if !used.iter().any(|u| u == stale) && !expired.contains(&stale) {
            out.push(expire(stale, attrs));
            expired.push(stale);
        }
    }
    out
}

/// The `Set-Cookie` values expiring `name` (whether present or not) and every chunk of it
/// in `request`.
pub fn clear_chunked(name: &str, attrs: &Attrs, request: &HeaderMap) -> Vec<HeaderValue> {
    let mut out = vec![expire(name, attrs)];
    let mut expired = vec![name];
    for stale in present(request, name) {
        if !expired.contains(&stale) {
            out.push(expire(stale, attrs));
            expired.push(stale);
        }
    }
    out
}

/// Removes from the `Cookie` headers every cookie whose name `is_ours`, so the upstream never
/// sees the session. What is left becomes one `Cookie` header (RFC 9113 §8.2.3 joins with
/// `; `), or none when nothing is left. Headers without a cookie of ours are not touched.
pub fn strip(headers: &mut HeaderMap, is_ours: impl Fn(&str) -> bool) {
    let ours = |pair: &[u8]| {
        let name = pair
            .split(|&b| b == b'=')
            .next()
            .unwrap_or(pair)
            .trim_ascii();
        pair.contains(&b'=') && std::str::from_utf8(name).is_ok_and(&is_ours)
    };
    let all_pairs = || {
        headers
            .get_all(COOKIE)
            .iter()
            .flat_map(|h| h.as_bytes().split(|&b| b == b';'))
            .map(<[u8]>::trim_ascii)
            .filter(|p| !p.is_empty())
    };
    if !all_pairs().any(ours) {
        return;
    }
    let mut kept = Vec::new();
    for pair in all_pairs().filter(|p| !ours(p)) {
        if !kept.is_empty() {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(pair);
    }
    // The kept bytes all came from valid header values, so this cannot fail; if it did,
    // dropping the header is the safe side (our cookies never reach the upstream).
    let rewritten = HeaderValue::from_bytes(&kept).ok();
    headers.remove(COOKIE);
    if let Some(value) = rewritten.filter(|_| !kept.is_empty()) {
        headers.insert(COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn request(cookies: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(COOKIE, HeaderValue::from_str(c).unwrap());
        }
        h
    }

    fn texts(values: &[HeaderValue]) -> Vec<&str> {
        values.iter().map(|v| v.to_str().unwrap()).collect()
    }

    #[test]
    fn finds_a_cookie_across_headers_trimmed_and_unquoted() {
        let h = request(&["a=1;b=2", " sess = \"xyz\" ; c=3", "sess=later"]);
        assert_eq!(get(&h, "a"), Some("1"));
        assert_eq!(get(&h, "c"), Some("3"));
        assert_eq!(get(&h, "sess"), Some("xyz"));
        assert_eq!(get(&h, "se"), None);
        assert_eq!(get(&h, "missing"), None);
        let odd = request(&["flag; e=; q=\""]);
        assert_eq!(get(&odd, "flag"), None);
        assert_eq!(get(&odd, "e"), Some(""));
        assert_eq!(get(&odd, "q"), Some("\""));
    }

    #[test]
    fn finds_a_cookie_next_to_other_sites_non_utf8_cookies() {
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_bytes(b"x=\xff\xfe; s=ok").unwrap(),
        );
        assert_eq!(get(&h, "s"), Some("ok"));
        assert_eq!(get(&h, "x"), None);
    }

    #[test]
    fn validates_names_and_values() {
        assert!(valid_name("sg_session"));
        assert!(valid_name("__Host-s.0"));
        for bad in ["", "a b", "a=b", "a;b", "a\"", "é", "a\t", "a/b"] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(valid_value(""));
        assert!(valid_value("AbC-_09"));
        for bad in ["a b", "a;b", "a,b", "a\"b", "a\\b", "é"] {
            assert!(!valid_value(bad), "{bad}");
        }
    }

    #[test]
    fn recognises_chunks_and_login_cookies() {
        assert!(is_named("s", "s"));
        assert!(is_named("s.0", "s"));
        assert!(is_named("s.12", "s"));
        for other in ["s.", "s.x", "s0", "ss", "s.1a", "t", ""] {
            assert!(!is_named(other, "s"), "{other}");
        }
        assert!(is_prefixed("sg_login_AbCdEf-_1234", "sg_login"));
        for other in [
            "sg_login_short",
            "sg_login_AbCdEf-_12345",
            "sg_loginAbCdEf-_1234",
            "sg_login_AbCdEf.=1234",
            "sg_login",
        ] {
            assert!(!is_prefixed(other, "sg_login"), "{other}");
        }
    }

    #[test]
    fn sets_one_cookie_with_its_attributes() {
        let attrs = Attrs {
            path: "/app".into(),
            domain: Some("example.com".into()),
            max_age: Some(3600),
            same_site: SameSite::Strict,
            ..Attrs::default()
        };
        assert_eq!(
            set("s", "v", &attrs),
            "s=v; Path=/app; Domain=example.com; Max-Age=3600; Secure; HttpOnly; SameSite=Strict"
        );
        let plain = Attrs {
            secure: false,
            http_only: false,
            ..Attrs::default()
        };
        assert_eq!(set("s", "v", &plain), "s=v; Path=/; SameSite=Lax");
    }

    #[test]
    fn never_lets_a_value_or_attribute_inject_attributes() {
        let attrs = Attrs::default();
        assert_eq!(set("s", "v; Domain=evil.com", &attrs), "");
        assert_eq!(set("s;x", "v", &attrs), "");
        let path = Attrs {
            path: "/; Domain=evil.com".into(),
            ..Attrs::default()
        };
        assert_eq!(set("s", "v", &path), "");
        let domain = Attrs {
            domain: Some("a.com; Secure".into()),
            ..Attrs::default()
        };
        assert_eq!(set("s", "v", &domain), "");
    }

    #[test]
    fn sets_a_short_value_whole_and_expires_old_chunks() {
        let h = request(&["s.0=old; s.1=old", "other=1"]);
        let out = set_chunked("s", "new", &Attrs::default(), &h);
        assert_eq!(
            texts(&out),
            [
                "s=new; Path=/; Secure; HttpOnly; SameSite=Lax",
                "s.0=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Lax",
                "s.1=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Lax",
            ]
        );
    }

    #[test]
    fn chunks_a_long_value_and_reads_it_back() {
        let value: String = (0..CHUNK * 2 + 10)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let h = request(&["s=old; s.3=old; s.3=dup"]);
        let out = set_chunked("s", &value, &Attrs::default(), &h);
        let texts = texts(&out);
        assert_eq!(texts.len(), 5);
        assert!(texts[0].starts_with(&format!("s.0={}; ", &value[..CHUNK])));
        assert!(texts[2].starts_with(&format!("s.2={}; ", &value[CHUNK * 2..])));
        assert!(texts[3].starts_with("s=; Path=/; Max-Age=0"));
        assert!(texts[4].starts_with("s.3=; Path=/; Max-Age=0"));

        let cookies: Vec<String> = texts[..3]
            .iter()
            .map(|t| t.split(';').next().unwrap().to_owned())
            .collect();
        let back = request(&[&cookies.join("; ")]);
        assert_eq!(get_chunked(&back, "s"), Some(value));
    }

    #[test]
    fn reads_chunks_up_to_the_first_missing_and_prefers_the_whole_cookie() {
        assert_eq!(
            get_chunked(&request(&["s.0=a; s.1=b; s.3=d"]), "s"),
            Some("ab".into())
        );
        assert_eq!(
            get_chunked(&request(&["s.0=a", "s=whole"]), "s"),
            Some("whole".into())
        );
        assert_eq!(get_chunked(&request(&["s.1=b"]), "s"), None);
        let many: Vec<String> = (0..10).map(|k| format!("s.{k}=x")).collect();
        assert_eq!(
            get_chunked(&request(&[&many.join("; ")]), "s"),
            Some("x".repeat(MAX_CHUNKS))
        );
    }

    #[test]
    fn clears_every_chunk_and_the_name_itself() {
        let attrs = Attrs {
            domain: Some("example.com".into()),
            ..Attrs::default()
        };
        let out = clear_chunked("s", &attrs, &request(&["s.0=a; s.1=b; t=1"]));
        assert_eq!(
            texts(&out),
            [
                "s=; Path=/; Domain=example.com; Max-Age=0; Secure; HttpOnly; SameSite=Lax",
                "s.0=; Path=/; Domain=example.com; Max-Age=0; Secure; HttpOnly; SameSite=Lax",
                "s.1=; Path=/; Domain=example.com; Max-Age=0; Secure; HttpOnly; SameSite=Lax",
            ]
        );
    }

    #[test]
    fn clears_instead_of_setting_a_value_too_large_or_invalid() {
        let h = request(&["s=old"]);
        let huge = "a".repeat(CHUNK * MAX_CHUNKS + 1);
        for value in [huge.as_str(), "bad value"] {
            let out = set_chunked("s", value, &Attrs::default(), &h);
            assert_eq!(
                texts(&out),
                ["s=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Lax"]
            );
        }
    }

    #[test]
    fn strips_our_cookies_into_one_header() {
        let mut h = request(&["a=1; s=x; s.0=y", "sg_login_AbCdEf-_1234=z; b=2", "c=3"]);
        strip(&mut h, |n| is_named(n, "s") || is_prefixed(n, "sg_login"));
        let all: Vec<_> = h.get_all(COOKIE).iter().collect();
        assert_eq!(all, ["a=1; b=2; c=3"]);
    }

    #[test]
    fn strips_the_header_when_nothing_is_left() {
        let mut h = request(&["s=x", "s.0=y"]);
        h.insert("x-other", HeaderValue::from_static("kept"));
        strip(&mut h, |n| is_named(n, "s"));
        assert!(h.get(COOKIE).is_none());
        assert_eq!(h.get("x-other").unwrap(), "kept");
    }

    #[test]
    fn leaves_headers_without_our_cookies_untouched() {
        let mut h = request(&["a=1;b=2", "flag"]);
        strip(&mut h, |n| is_named(n, "s"));
        let all: Vec<_> = h.get_all(COOKIE).iter().collect();
        assert_eq!(all, ["a=1;b=2", "flag"]);
    }

    #[test]
    fn validates_attributes_for_what_browsers_accept() {
        assert!(Attrs::default().validate("sg_session").is_ok());
        assert!(Attrs::default().validate("__Host-sg").is_ok());
        let bad = Attrs {
            path: "app".into(),
            domain: Some("exa mple.com".into()),
            secure: false,
            same_site: SameSite::None,
            ..Attrs::default()
        };
        let errors = bad.validate("__Host-s").unwrap_err();
        assert_eq!(errors.len(), 5, "{errors:?}");
        assert!(Attrs::default().validate("bad name").is_err());
    }
}
