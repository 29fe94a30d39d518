//! A strict RFC 9112 reading of what an upstream received on one connection: the messages
//! are counted only if every one of them can be framed in exactly one way.
//!
//! Stricter than a server needs to be, on purpose: anything a lenient upstream could read
//! differently from a strict one (two framing headers, an obs-fold, a bare CR or LF, bytes
//! left after the last message) is an error, named in the message returned.

/// Fields that frame or route a message, never allowed in a trailer section (RFC 9110
/// §6.5.1).
const NOT_IN_TRAILERS: [&str; 4] = ["content-length", "transfer-encoding", "host", "trailer"];

/// How many requests `bytes` holds, or why it is ambiguous.
pub fn count_requests(mut bytes: &[u8]) -> Result<usize, String> {
    let mut n = 0;
    while !bytes.is_empty() {
        let rest = message(bytes).map_err(|e| format!("request {}: {e}", n + 1))?;
        bytes = rest;
        n += 1;
    }
    Ok(n)
}

/// One request from the front of `bytes`; returns what follows it.
fn message(bytes: &[u8]) -> Result<&[u8], String> {
    let (first, mut rest) = line(bytes)?;
    let http10 = request_line(first)?;
    let mut lengths = Vec::new();
    let mut codings = Vec::new();
    let mut hosts = 0;
    loop {
        let (l, r) = line(rest)?;
        rest = r;
        if l.is_empty() {
            break;
        }
        let (name, value) = field(l)?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" => lengths.push(value),
            "transfer-encoding" => codings.push(value),
            "host" => hosts += 1,
            _ => {}
        }
    }
    if !http10 && hosts != 1 {
        return Err(format!("{hosts} Host fields in an HTTP/1.1 request"));
    }
    match (lengths.as_slice(), codings.as_slice()) {
        ([], []) => Ok(rest),
        ([_, ..], [_, ..]) => Err("both Content-Length and Transfer-Encoding".into()),
        ([], [te]) => {
            if http10 {
                return Err("Transfer-Encoding in an HTTP/1.0 request".into());
            }
            if !te.eq_ignore_ascii_case("chunked") {
                return Err(format!("Transfer-Encoding `{te}` is not just chunked"));
            }
            chunked(rest)
        }
        ([], _) => Err("more than one Transfer-Encoding field".into()),
        ([cl], []) => {
            if cl.is_empty() || cl.len() > 18 || !cl.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("Content-Length `{cl}` is not a length"));
            }
            let n: usize = cl.parse().map_err(|_| format!("Content-Length `{cl}`"))?;
            if rest.len() < n {
                return Err(format!("a {n}-byte body with {} bytes sent", rest.len()));
            }
            Ok(&rest[n..])
        }
        (_, []) => Err("more than one Content-Length field".into()),
    }
}

/// The line at the front of `bytes` (without its CRLF) and what follows. A CR or LF
/// anywhere but in the final CRLF is an error.
fn line(bytes: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let Some(lf) = bytes.iter().position(|b| *b == b'\n') else {
        return Err(format!("an unterminated line: {:?}", shown(bytes)));
    };
    if lf == 0 || bytes[lf - 1] != b'\r' {
        return Err(format!("a bare LF after {:?}", shown(&bytes[..lf])));
    }
    let l = &bytes[..lf - 1];
    if l.contains(&b'\r') {
        return Err(format!("a bare CR in {:?}", shown(l)));
    }
    Ok((l, &bytes[lf + 1..]))
}

/// Checks `method SP request-target SP HTTP/1.x`; returns whether it is HTTP/1.0.
fn request_line(l: &[u8]) -> Result<bool, String> {
    let parts: Vec<&[u8]> = l.split(|b| *b == b' ').collect();
    let [method, target, version] = parts.as_slice() else {
        return Err(format!("request line {:?}", shown(l)));
    };
    if method.is_empty() || !method.iter().all(|b| is_tchar(*b)) {
        return Err(format!("method {:?}", shown(method)));
    }
    if target.is_empty() || !target.iter().all(|b| b.is_ascii_graphic() && *b != b'#') {
        return Err(format!("request target {:?}", shown(target)));
    }
    match *version {
        b"HTTP/1.1" => Ok(false),
        b"HTTP/1.0" => Ok(true),
        v => Err(format!("version {:?}", shown(v))),
    }
}

/// Splits `name: value` (no space before the colon, no obs-fold, no control characters).
fn field(l: &[u8]) -> Result<(String, String), String> {
    if l[0] == b' ' || l[0] == b'\t' {
        return Err(format!("an obs-fold line {:?}", shown(l)));
    }
    let Some(colon) = l.iter().position(|b| *b == b':') else {
        return Err(format!("a field without a colon {:?}", shown(l)));
    };
    let (name, value) = (&l[..colon], &l[colon + 1..]);
    if name.is_empty() || !name.iter().all(|b| is_tchar(*b)) {
        return Err(format!("field name {:?}", shown(name)));
    }
    let value = value.trim_ascii();
    if value
        .iter()
        .any(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f)
    {
        return Err(format!("a control character in {:?}", shown(l)));
    }
    Ok((
        String::from_utf8_lossy(name).into_owned(),
        String::from_utf8_lossy(value).into_owned(),
    ))
}

/// A chunked body (RFC 9112 §7.1) from the front of `bytes`; returns what follows it.
fn chunked(mut bytes: &[u8]) -> Result<&[u8], String> {
    loop {
        let (l, rest) = line(bytes)?;
        let digits = l.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 || digits > 16 {
            return Err(format!("chunk size {:?}", shown(l)));
        }
        chunk_extensions(&l[digits..])?;
        let hex = std::str::from_utf8(&l[..digits]).unwrap_or("");
        let size = u64::from_str_radix(hex, 16).map_err(|_| format!("chunk size {hex}"))?;
        if size == 0 {
            return trailers(rest);
        }
        let size = usize::try_from(size).map_err(|_| format!("chunk size {hex}"))?;
        if rest.len() < size + 2 {
            return Err(format!(
                "a {size}-byte chunk with {} bytes sent",
                rest.len()
            ));
        }
        if &rest[size..size + 2] != b"\r\n" {
            return Err("no CRLF after chunk data".into());
        }
        bytes = &rest[size + 2..];
    }
}

/// `*( BWS ";" BWS name [ BWS "=" BWS value ] )`, values being tokens or quoted strings
/// without escapes (enough for what a proxy forwards).
fn chunk_extensions(mut ext: &[u8]) -> Result<(), String> {
    let bws = |s: &[u8]| -> usize { s.iter().take_while(|b| **b == b' ' || **b == b'\t').count() };
    let token = |s: &[u8]| -> usize { s.iter().take_while(|b| is_tchar(**b)).count() };
    while !ext.is_empty() {
        ext = &ext[bws(ext)..];
        let Some(rest) = ext.strip_prefix(b";") else {
            return Err(format!("chunk extension {:?}", shown(ext)));
        };
        ext = &rest[bws(rest)..];
        let name = token(ext);
        if name == 0 {
            return Err(format!("chunk extension name {:?}", shown(ext)));
        }
        ext = &ext[name..];
        let after = bws(ext);
        if let Some(rest) = ext[after..].strip_prefix(b"=") {
            let rest = &rest[bws(rest)..];
            let value = match rest.strip_prefix(b"\"") {
                Some(q) => match q.iter().position(|b| *b == b'"') {
                    Some(end) => end + 2,
                    None => return Err("an unterminated quoted chunk extension".into()),
                },
                None => token(rest),
            };
            if value == 0 {
                return Err(format!("chunk extension value {:?}", shown(rest)));
            }
            ext = &rest[value..];
        }
    }
    Ok(())
}

/// The trailer section after the last chunk, up to its empty line.
fn trailers(mut bytes: &[u8]) -> Result<&[u8], String> {
    loop {
        let (l, rest) = line(bytes)?;
        if l.is_empty() {
            return Ok(rest);
        }
        let (name, _) = field(l)?;
        if NOT_IN_TRAILERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(format!("`{name}` in a trailer section"));
        }
        bytes = rest;
    }
}

/// A token character (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Bytes for an error message (escaped, cut short).
fn shown(b: &[u8]) -> String {
    let s = b.escape_ascii().to_string();
    match s.char_indices().nth(60) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::count_requests;

    fn count(s: &str) -> Result<usize, String> {
        count_requests(s.as_bytes())
    }

    #[test]
    fn counts_requests_framed_by_length_chunked_or_nothing() {
        let get = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let post = "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n\r\nabc";
        let chunked = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                       3;x=\"y\"\r\nabc\r\n0\r\nX-T: 1\r\n\r\n";
        assert_eq!(count(""), Ok(0));
        assert_eq!(count(&format!("{get}{post}{chunked}{get}")), Ok(4));
        assert_eq!(count("GET / HTTP/1.0\r\n\r\n"), Ok(1));
    }

    #[test]
    fn refuses_every_ambiguous_framing() {
        for text in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;a\rb\r\nabc\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nContent-Length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nabc",
            "GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /",
        ] {
            assert!(count(text).is_err(), "{text:?}");
        }
    }
}
