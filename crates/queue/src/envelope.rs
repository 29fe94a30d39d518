//! The Pub/Sub envelope of a queued request: what the `pubsub` backend publishes and what
//! the push playback (`pubsub_push`) unpacks. As in the seed's WAL, the body is the
//! message's `data` and the rest of the request travels in attributes:
//!
//! | attribute | value |
//! |-----------|-------|
//! | `sluicegate_method` | `POST` |
//! | `sluicegate_uri` | path and query as received (`/wal/hooks?x=1`) |
//! | `sluicegate_headers` | JSON array of `[name, value]` (or `[name, base64, "base64"]` for a value that is not UTF-8), in order, repeated names kept |
//! | `sluicegate_request_id` | the enqueuing request's id |
//! | `sluicegate_queue` | the queue's name |
//!
//! Pub/Sub limits an attribute value to 1,024 bytes: a longer value is cut at character
//! boundaries into `KEY`, `KEY_1`, `KEY_2`, …, which [`decode`] joins again.
//!
//! Invariant: `decode(encode(r)) == r` for every request [`record`](super::record) can
//! hold; [`decode`] never panics on what a push delivers.

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::Value;

use super::record::QueuedRequest;

/// The method attribute.
pub const METHOD: &str = "sluicegate_method";
/// The path-and-query attribute.
pub const URI: &str = "sluicegate_uri";
/// The headers attribute (JSON).
pub const HEADERS: &str = "sluicegate_headers";
/// The request-id attribute.
pub const REQUEST_ID: &str = "sluicegate_request_id";
/// The queue-name attribute.
pub const QUEUE: &str = "sluicegate_queue";

/// Longest attribute value written (Pub/Sub allows 1,024 bytes).
pub const MAX_VALUE: usize = 1000;
/// Most attributes Pub/Sub accepts on one message.
pub const MAX_ATTRIBUTES: usize = 100;

/// A message ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The body.
    pub data: Bytes,
    /// Attribute pairs.
    pub attributes: Vec<(String, String)>,
}

impl Envelope {
    /// The `PubsubMessage` JSON of the REST publish call (`data` in base64).
    pub fn to_json(&self) -> Value {
        let attributes: serde_json::Map<String, Value> = self
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        serde_json::json!({
            "data": base64::engine::general_purpose::STANDARD.encode(&self.data),
            "attributes": attributes,
        })
    }
}

fn split_into(out: &mut Vec<(String, String)>, key: &str, value: &str) {
    let mut rest = value;
    let mut part = 0usize;
    loop {
        let mut cut = rest.len().min(MAX_VALUE);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let name = if part == 0 {
            key.to_string()
        } else {
            format!("{key}_{part}")
        };
        out.push((name, rest[..cut].to_string()));
        rest = &rest[cut..];
        part += 1;
        if rest.is_empty() {
            return;
        }
    }
}

/// The envelope of `req`, queued in `queue`; `Err` when it cannot fit Pub/Sub's
/// attribute limits.
pub fn encode(queue: &str, req: &QueuedRequest) -> Result<Envelope, String> {
    let headers: Vec<Value> = req
        .headers
        .iter()
        .map(|(n, v)| match v.to_str() {
            Ok(text) => serde_json::json!([n.as_str(), text]),
            Err(_) => serde_json::json!([
                n.as_str(),
                base64::engine::general_purpose::STANDARD.encode(v.as_bytes()),
                "base64"
            ]),
        })
        .collect();
    let headers = Value::Array(headers).to_string();
    let mut attributes = Vec::new();
    split_into(&mut attributes, METHOD, req.method.as_str());
    split_into(&mut attributes, URI, &req.target);
    split_into(&mut attributes, HEADERS, &headers);
    if !req.request_id.is_empty() {
        split_into(&mut attributes, REQUEST_ID, &req.request_id);
    }
    split_into(&mut attributes, QUEUE, queue);
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(format!(
            "the request's headers and URI need {} Pub/Sub attributes, more than the {MAX_ATTRIBUTES} allowed",
            attributes.len()
        ));
    }
    Ok(Envelope {
        data: req.body.clone(),
        attributes,
    })
}

/// The value of `key`, joined from its parts, read through `attr`.
fn joined(attr: &impl Fn(&str) -> Option<String>, key: &str) -> Option<String> {
    let mut value = attr(key)?;
    for part in 1..MAX_ATTRIBUTES {
        match attr(&format!("{key}_{part}")) {
            Some(more) => value.push_str(&more),
            None => break,
        }
    }
    Some(value)
}

/// The request in an envelope whose attributes `attr` looks up, with body `data`.
pub fn decode(attr: impl Fn(&str) -> Option<String>, data: Bytes) -> Result<QueuedRequest, String> {
    let method = joined(&attr, METHOD).ok_or_else(|| format!("no `{METHOD}` attribute"))?;
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("`{METHOD}` is not an HTTP method"))?;
    let target = joined(&attr, URI).ok_or_else(|| format!("no `{URI}` attribute"))?;
    if !target.starts_with('/') || target.parse::<http::uri::PathAndQuery>().is_err() {
        return Err(format!("`{URI}` is not a path and query"));
    }
    let mut headers = HeaderMap::new();
    if let Some(text) = joined(&attr, HEADERS) {
        let list: Vec<Vec<String>> = serde_json::from_str(&text)
            .map_err(|e| format!("`{HEADERS}` is not a JSON list of pairs: {e}"))?;
        for pair in list {
            let (name, value) = match pair.as_slice() {
                [n, v] => (n, v.as_bytes().to_vec()),
                [n, v, enc] if enc == "base64" => (
                    n,
                    base64::engine::general_purpose::STANDARD
                        .decode(v)
                        .map_err(|_| format!("`{HEADERS}`: bad base64 value of `{n}`"))?,
                ),
                _ => return Err(format!("`{HEADERS}`: an entry is not [name, value]")),
            };
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("`{HEADERS}`: `{name}` is not a header name"))?;
            let value = HeaderValue::from_bytes(&value)
                .map_err(|_| format!("`{HEADERS}`: bad value of `{name}`"))?;
            headers.append(name, value);
        }
    }
    Ok(QueuedRequest {
        method,
        target,
        headers,
        body: data,
        request_id: joined(&attr, REQUEST_ID).unwrap_or_default(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn lookup(env: &Envelope) -> impl Fn(&str) -> Option<String> + '_ {
        |k| {
            env.attributes
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        }
    }

    fn from<'a>(attrs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        |k| {
            attrs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn sample() -> QueuedRequest {
        let mut r = QueuedRequest::new(Method::PUT, "/wal/hooks/a?x=1&y=%20");
        r.headers
            .append("content-type", HeaderValue::from_static("application/json"));
        r.headers.append("x-dup", HeaderValue::from_static("one"));
        r.headers.append("x-dup", HeaderValue::from_static("two"));
        r.headers
            .append("x-raw", HeaderValue::from_bytes(b"caf\xe9").unwrap());
        r.body = Bytes::from_static(b"\x00\x01binary body\xff");
        r.request_id = "req-1".into();
        r
    }

    #[test]
    fn round_trips_method_target_headers_body_and_request_id() {
        let env = encode("wal", &sample()).unwrap();
        assert_eq!(env.data, sample().body);
        let back = decode(lookup(&env), env.data.clone()).unwrap();
        assert_eq!(back, sample());
        assert!(env.attributes.iter().any(|(k, v)| k == QUEUE && v == "wal"));
    }

    #[test]
    fn long_values_are_split_under_the_attribute_limit_and_joined() {
        let mut r = sample();
        r.headers
            .append("cookie", HeaderValue::from_str(&"é".repeat(3000)).unwrap());
        r.target = format!("/wal/{}", "a".repeat(2500));
        let env = encode("wal", &r).unwrap();
        assert!(env.attributes.iter().all(|(_, v)| v.len() <= MAX_VALUE));
        assert!(env
            .attributes
            .iter()
            .any(|(k, _)| k == "sluicegate_headers_5"));
        assert_eq!(decode(lookup(&env), env.data.clone()).unwrap(), r);
    }

    #[test]
    fn too_many_parts_are_refused() {
        let mut r = sample();
        r.headers.append(
            "x-big",
            HeaderValue::from_str(&"a".repeat(120_000)).unwrap(),
        );
        assert!(encode("wal", &r).unwrap_err().contains("attributes"));
    }

    #[test]
    fn bad_envelopes_are_errors() {
        let none = |_: &str| None::<String>;
        assert!(decode(none, Bytes::new()).unwrap_err().contains(METHOD));
        let attrs = [(METHOD, "POST"), (URI, "no-slash")];
        assert!(decode(from(&attrs), Bytes::new())
            .unwrap_err()
            .contains(URI));
        let attrs = [(METHOD, "PO ST"), (URI, "/")];
        assert!(decode(from(&attrs), Bytes::new()).is_err());
        for headers in [
            "{",
            "[[1,2]]",
            "[[\"a\"]]",
            "[[\"bad name\",\"v\"]]",
            "[[\"a\",\"x\",\"base64\"]]",
        ] {
            let attrs = [(METHOD, "POST"), (URI, "/"), (HEADERS, headers)];
            assert!(decode(from(&attrs), Bytes::new()).is_err(), "{headers}");
        }
        let attrs = [(METHOD, "POST"), (URI, "/a")];
        assert_eq!(
            decode(from(&attrs), Bytes::from_static(b"x"))
                .unwrap()
                .target,
            "/a"
        );
    }
}
