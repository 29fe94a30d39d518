//! Consumers: the API clients a gateway knows by name, each with its credentials — the API
//! keys `key_auth` accepts and the JWT issuers and keys `jwt` verifies — so one entry
//! (a `consumers:` item in the file, or an entity of the cluster store) admits a client
//! on every route whose plugin says `consumers: true`, and names it for the plugins after
//! it (`rate_limit` keyed by consumer).
//!
//! ```yaml
//! consumers:
//!   - name: partner-a
//!     credentials:
//!       - {id: key-1, type: key_auth, key: "${secret:partner_a_key}"}
//!       - {id: jwt-1, type: jwt, issuer: partner-a, secret: "${secret:partner_a_jwt}", alg: HS256}
//! ```
//!
//! In a file, credential values are secret references (`${secret:NAME}`, with their
//! previous values during a rotation), as everywhere in the configuration. An entity from
//! the cluster store (a node with no file line) may carry the value itself: the store is
//! then where those values live, as a consumer database is.
//!
//! API keys are looked up by their SHA-256 digest, so the lookup takes the same few steps
//! for one consumer or a hundred thousand and reveals nothing of a key's bytes.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use sluicegate_core::diag::{Diags, Path};
use sluicegate_core::name;
use sluicegate_core::yaml::{Node, NodeKind};
use sluicegate_jwt::keys::{self, Key, Material};
use sluicegate_secrets::SecretStore;

use super::parse_config;

/// Every consumer of a configuration, indexed by credential.
#[derive(Default)]
pub struct Consumers {
    /// How many consumers there are (those without credentials included).
    count: usize,
    keys: HashMap<[u8; 32], Arc<str>>,
    issuers: HashMap<String, (Arc<str>, Vec<Key>)>,
}

impl std::fmt::Debug for Consumers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumers")
            .field("consumers", &self.count)
            .field("keys", &self.keys.len())
            .field("issuers", &self.issuers.len())
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsumerConfig {
    name: String,
    /// Read from the node itself (each credential is parsed by its `type`).
    #[serde(default)]
    #[allow(dead_code)]
    credentials: Vec<serde::de::IgnoredAny>,
    /// Free-form labels, for the operator.
    #[serde(default)]
    #[allow(dead_code)]
    tags: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyCredential {
    #[allow(dead_code)]
    id: Option<String>,
    #[allow(dead_code)]
    r#type: String,
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtCredential {
    #[allow(dead_code)]
    id: Option<String>,
    #[allow(dead_code)]
    r#type: String,
    /// Matched against the token's `iss`.
    issuer: String,
    /// A shared secret (HS256/384/512).
    secret: Option<String>,
    /// A public key, PEM (RS*, PS*, ES*, EdDSA).
    pem: Option<String>,
    /// The one algorithm the key is for.
    alg: Option<String>,
}

/// The credential types, as `type` names them.
pub const CREDENTIAL_TYPES: [&str; 2] = ["key_auth", "jwt"];

impl Consumers {
    /// Builds the `consumers:` section (`None`: there is none), recording every problem.
    pub fn build(
        node: Option<&Node>,
        path: &Path,
        secrets: &SecretStore,
        diags: &mut Diags,
    ) -> Consumers {
        let mut out = Building {
            consumers: Consumers::default(),
            key_at: HashMap::new(),
            secrets,
        };
        let items = match node.map(|n| &n.kind) {
            None | Some(NodeKind::Null) => return out.consumers,
            Some(NodeKind::Seq(items)) => items,
            Some(_) => {
                diags.push(path, "expected a list of consumers");
                return out.consumers;
            }
        };
        let mut seen_names: HashMap<String, usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let p = path.index(i);
            let Some(c) = parse_config::<ConsumerConfig>(item, &p, diags) else {
                continue;
            };
            if !name::is_valid(&c.name) {
                let why = format!("invalid consumer name `{}`: {}", c.name, name::RULE);
                diags.push(&p.key("name"), why);
                continue;
            }
            if let Some(first) = seen_names.insert(c.name.clone(), i) {
                let why = format!("consumer `{}` is also {}", c.name, path.index(first));
                diags.push(&p.key("name"), why);
                continue;
            }
            out.consumers.count += 1;
            let owner: Arc<str> = Arc::from(c.name.as_str());
            let credentials = match item.get("credentials").map(|n| &n.kind) {
                Some(NodeKind::Seq(list)) => list.as_slice(),
                _ => &[],
            };
            let mut ids: HashMap<String, usize> = HashMap::new();
            for (j, cred) in credentials.iter().enumerate() {
                let cp = p.key("credentials").index(j);
                check_id(cred, j, &cp, &mut ids, diags);
                out.credential(&owner, cred, &cp, diags);
            }
        }
        out.consumers
    }

    /// The consumer whose API key `candidate` is.
    pub fn by_key(&self, candidate: &[u8]) -> Option<&Arc<str>> {
        let digest: [u8; 32] = Sha256::digest(candidate).into();
        self.keys.get(&digest)
    }

    /// The consumer that issues tokens with `iss` = `issuer`, and its keys.
    pub fn by_issuer(&self, issuer: &str) -> Option<(&Arc<str>, &[Key])> {
        self.issuers.get(issuer).map(|(n, k)| (n, k.as_slice()))
    }

    /// How many consumers there are.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// [`Consumers`] while it is built.
struct Building<'a> {
    consumers: Consumers,
    /// Where each key was first given (by digest), to name both places of a duplicate.
    key_at: HashMap<[u8; 32], String>,
    secrets: &'a SecretStore,
}

impl Building<'_> {
    /// Adds credential `cred` (at `path`) of consumer `owner`.
    fn credential(&mut self, owner: &Arc<str>, cred: &Node, path: &Path, diags: &mut Diags) {
        let kind = cred.get("type").and_then(|t| match &t.kind {
            NodeKind::Str(s) => Some(s.as_str()),
            _ => None,
        });
        match kind {
            Some("key_auth") => {
                if let Some(k) = parse_config::<KeyCredential>(cred, path, diags) {
                    self.key(owner, &k, cred.line, &path.key("key"), diags);
                }
            }
            Some("jwt") => {
                if let Some(k) = parse_config::<JwtCredential>(cred, path, diags) {
                    self.issuer(owner, &k, cred.line, path, diags);
                }
            }
            Some(other) => diags.push(
                &path.key("type"),
                format!(
                    "unknown credential type `{other}`; expected {}",
                    CREDENTIAL_TYPES.join(" or ")
                ),
            ),
            None => diags.push(
                path,
                format!(
                    "give the credential's `type`: {}",
                    CREDENTIAL_TYPES.join(" or ")
                ),
            ),
        }
    }

    fn key(
        &mut self,
        owner: &Arc<str>,
        k: &KeyCredential,
        line: usize,
        path: &Path,
        diags: &mut Diags,
    ) {
        for value in self.secrets.resolve_material(&k.key, line, path, diags) {
            let value = value.expose();
            if value.is_empty() {
                diags.push(path, "an empty key admits nobody");
                continue;
            }
            let digest: [u8; 32] = Sha256::digest(value).into();
            if let Some(first) = self.key_at.get(&digest) {
                diags.push(path, format!("the same key is also {first}"));
                continue;
            }
            self.key_at.insert(digest, path.to_string());
            self.consumers.keys.insert(digest, owner.clone());
        }
    }

    fn issuer(
        &mut self,
        owner: &Arc<str>,
        k: &JwtCredential,
        line: usize,
        path: &Path,
        diags: &mut Diags,
    ) {
        if k.issuer.is_empty() {
            diags.push(
                &path.key("issuer"),
                "give the issuer (`iss`) its tokens carry",
            );
            return;
        }
        if let Some((other, _)) = self.consumers.issuers.get(&k.issuer) {
            let why = format!(
                "issuer `{}` belongs to consumer `{other}` already",
                k.issuer
            );
            diags.push(&path.key("issuer"), why);
            return;
        }
        let built = jwt_keys(k, line, path, self.secrets, diags);
        if !built.is_empty() {
            self.consumers
                .issuers
                .insert(k.issuer.clone(), (owner.clone(), built));
        }
    }
}

/// Checks a credential's optional `id`: a name, unique within its consumer.
fn check_id(
    cred: &Node,
    index: usize,
    path: &Path,
    ids: &mut HashMap<String, usize>,
    diags: &mut Diags,
) {
    match cred.get("id").map(|n| &n.kind) {
        None => {}
        Some(NodeKind::Str(id)) if name::is_valid(id) => {
            if let Some(first) = ids.insert(id.clone(), index) {
                let why = format!("credential id `{id}` is also credentials[{first}]");
                diags.push(&path.key("id"), why);
            }
        }
        Some(_) => diags.push(
            &path.key("id"),
            format!("an id is a string of {}", name::RULE),
        ),
    }
}

fn jwt_keys(
    k: &JwtCredential,
    line: usize,
    path: &Path,
    secrets: &SecretStore,
    diags: &mut Diags,
) -> Vec<Key> {
    let Ok(alg) = crate::jwt::materials::algorithm(k.alg.as_deref(), path, diags) else {
        return Vec::new();
    };
    let materials: Vec<(Path, Result<Material, String>)> = match (&k.secret, &k.pem) {
        (Some(s), None) => {
            let p = path.key("secret");
            secrets
                .resolve_material(s, line, &p, diags)
                .into_iter()
                .map(|v| (p.clone(), Material::hmac(v.expose(), alg)))
                .collect()
        }
        (None, Some(pem)) => vec![(path.key("pem"), keys::from_pem(pem))],
        _ => {
            diags.push(path, "give exactly one of `secret` and `pem`");
            return Vec::new();
        }
    };
    crate::jwt::materials::keys_of(materials, None, alg, path, diags)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn build(yaml: &str) -> (Consumers, Diags) {
        let env = std::collections::HashMap::from([(
            "PARTNER_KEY".to_string(),
            "partner-key-0123".to_string(),
        )]);
        let root = sluicegate_core::yaml::parse(yaml, &env).unwrap();
        let mut diags = Diags::default();
        let secrets = SecretStore::load_with_env(
            root.get("secrets"),
            std::path::Path::new("."),
            &env,
            &mut diags,
        );
        let c = Consumers::build(
            root.get("consumers"),
            &Path::root().key("consumers"),
            &secrets,
            &mut diags,
        );
        (c, diags)
    }

    #[test]
    fn keys_are_found_by_digest_and_name_their_consumer() {
        let (c, diags) = build(
            "secrets: {pk: {env: PARTNER_KEY}}\n\
             consumers:\n  - name: partner-a\n    credentials:\n      - {type: key_auth, key: \"${secret:pk}\"}\n  - name: b\n",
        );
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(c.len(), 2);
        assert_eq!(
            c.by_key(b"partner-key-0123").map(|n| &**n),
            Some("partner-a")
        );
        assert!(c.by_key(b"partner-key-0124").is_none());
    }

    /// Consumers as the cluster store gives them (nodes without a file line: values
    /// inline).
    fn from_store(json: serde_json::Value) -> Arc<Consumers> {
        fn node(v: &serde_json::Value) -> Node {
            let kind = match v {
                serde_json::Value::String(s) => NodeKind::Str(s.clone()),
                serde_json::Value::Array(a) => NodeKind::Seq(a.iter().map(node).collect()),
                serde_json::Value::Object(m) => {
                    NodeKind::Map(m.iter().map(|(k, v)| (k.clone(), node(v))).collect())
                }
                _ => NodeKind::Null,
            };
            Node { kind, line: 0 }
        }
        let mut diags = Diags::default();
        let c = Consumers::build(
            Some(&node(&json)),
            &Path::root().key("consumers"),
            &SecretStore::default(),
            &mut diags,
        );
        assert!(diags.is_empty(), "{diags:?}");
        Arc::new(c)
    }

    const JWT_SECRET: &str = "partner-b-secret-0123456789abcdef";

    fn store_consumers() -> Arc<Consumers> {
        from_store(serde_json::json!([
            {"name": "partner-a", "credentials": [{"id": "k1", "type": "key_auth", "key": "key-of-partner-a"}]},
            {"name": "partner-b", "credentials": [{"id": "j1", "type": "jwt", "issuer": "partner-b", "secret": JWT_SECRET, "alg": "HS256"}]},
        ]))
    }

    #[test]
    fn key_auth_admits_a_consumer_key_and_names_the_consumer() {
        use crate::testing::{access, build_with, harness, request, responded};
        use sluicegate_core::context::Consumer;
        let consumers = store_consumers();
        let (p, d) = build_with(crate::key_auth::build, "{consumers: true}", &[], &consumers);
        assert!(d.is_empty(), "{d:?}");
        let p = p.unwrap();
        let h = harness();
        let mut ctx = request(&h, "GET", "/", &[("x-api-key", "key-of-partner-a")], None);
        assert!(matches!(access(&*p, &mut ctx), crate::Flow::Continue));
        assert_eq!(
            ctx.vars.get::<Consumer>(),
            Some(&Consumer(Arc::from("partner-a")))
        );
        let mut ctx = request(&h, "GET", "/", &[("x-api-key", "key-of-partner-b")], None);
        assert_eq!(responded(access(&*p, &mut ctx)).0, 401);
        // Without `consumers: true`, the consumers' keys are not this route's.
        let (p, _) = build_with(
            crate::key_auth::build,
            "{keys: ['${secret:k}']}",
            &[("k", "another-key-000", None)],
            &consumers,
        );
        let mut ctx = request(&h, "GET", "/", &[("x-api-key", "key-of-partner-a")], None);
        assert_eq!(responded(access(&*p.unwrap(), &mut ctx)).0, 401);
    }

    #[test]
    fn jwt_verifies_a_consumer_issuer_with_its_credential_only() {
        use crate::jwt::tests::sign;
        use crate::testing::{access, build_with, harness, request, responded};
        use sluicegate_core::context::Consumer;
        let consumers = store_consumers();
        let (p, d) = build_with(crate::jwt::build, "{consumers: true}", &[], &consumers);
        assert!(d.is_empty(), "{d:?}");
        let p = p.unwrap();
        let h = harness();
        let exp = sluicegate_jwt::now() + 600.0;
        let claims = serde_json::json!({"iss": "partner-b", "sub": "user-7", "exp": exp});
        let good = sign("HS256", JWT_SECRET, serde_json::json!({}), &claims);
        let mut ctx = request(
            &h,
            "GET",
            "/",
            &[("authorization", &format!("Bearer {good}"))],
            None,
        );
        assert!(matches!(access(&*p, &mut ctx), crate::Flow::Continue));
        assert_eq!(
            ctx.vars.get::<Consumer>(),
            Some(&Consumer(Arc::from("partner-b")))
        );
        // Another secret, or another issuer, is not that consumer's.
        let forged = sign(
            "HS256",
            "some-other-secret-0123456789abcdef",
            serde_json::json!({}),
            &claims,
        );
        let mut ctx = request(
            &h,
            "GET",
            "/",
            &[("authorization", &format!("Bearer {forged}"))],
            None,
        );
        assert_eq!(responded(access(&*p, &mut ctx)).0, 401);
        let stranger = serde_json::json!({"iss": "nobody", "exp": exp});
        let t = sign("HS256", JWT_SECRET, serde_json::json!({}), &stranger);
        let mut ctx = request(
            &h,
            "GET",
            "/",
            &[("authorization", &format!("Bearer {t}"))],
            None,
        );
        assert_eq!(responded(access(&*p, &mut ctx)).0, 401);
    }

    #[test]
    fn a_file_names_secrets_and_every_mistake_has_its_path() {
        let (_, diags) = build(
            "consumers:\n  - name: a\n    credentials:\n      - {type: key_auth, key: plain}\n      - {type: ldap}\n      - {type: jwt, issuer: i, secret: \"${secret:nope}\"}\n  - name: a\n  - name: \"bad name\"\n",
        );
        let text = format!("{diags:?}");
        for p in [
            "consumers[0].credentials[0].key",
            "consumers[0].credentials[1].type",
            "consumers[0].credentials[2].secret",
            "consumers[1].name",
            "consumers[2].name",
        ] {
            assert!(text.contains(p), "no error at {p}: {text}");
        }
    }
}
