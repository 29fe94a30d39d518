//! `sluicegate.jwt`: the claims the `jwt` plugin verified for this request, and verifying
//! a token from a script.
//!
//! - `sluicegate.jwt.claims()`: the claims of the token the `jwt` plugin verified, as a
//!   table (a fresh copy each call: changing it changes nothing else), or `nil` when no
//!   token was verified (no `jwt` plugin on the route, an anonymous request let through by
//!   `optional: true`, or a call before the access phase). JSON `null` claims are
//!   `cjson.null`, as `cjson.decode` gives them.
//! - `sluicegate.jwt.verify(token, opts)`: checks a token with one key given in `opts`
//!   (`secret`, `pem` or `jwk`), with the plugin's rules (`alg: none` and keys of another
//!   type refused, `exp`/`nbf` with `leeway`, `issuer`, `audience`, `required_claims`);
//!   returns the claims, or `nil` and the reason. Bad `opts` raise an error.
//!
//! ```lua
//! local claims = sluicegate.jwt.claims()
//! if not claims or claims.plan ~= "pro" then return ngx.exit(403) end
//! local c, err = sluicegate.jwt.verify(ngx.var.http_x_partner_token, {pem = PARTNER_KEY, audience = "orders"})
//! ```

use std::rc::Rc;

use mlua::{Lua, Table, Value};

use super::super::vm::Host;
use super::super::{convert, Kinds};
use sluicegate_jwt::keys::{self, Alg, Key, Material};
use sluicegate_jwt::token::ClaimRules;

/// Longest token `verify` accepts (the plugin's default `max_token_bytes`).
const MAX_TOKEN_BYTES: usize = 8192;

/// A string or a list of strings from `opts[name]`.
fn strings(lua: &Lua, opts: &Table, name: &str) -> mlua::Result<Vec<String>> {
    match opts.raw_get::<Value>(name)? {
        Value::Nil => Ok(Vec::new()),
        Value::String(s) => Ok(vec![s.to_str()?.to_string()]),
        Value::Table(t) => t
            .sequence_values::<String>()
            .collect::<mlua::Result<Vec<_>>>()
            .map_err(|_| {
                convert::error(
                    lua,
                    format!(
                        "sluicegate.jwt.verify: `{name}` must be a string or a list of strings"
                    ),
                )
            }),
        _ => Err(convert::error(
            lua,
            format!("sluicegate.jwt.verify: `{name}` must be a string or a list of strings"),
        )),
    }
}

/// The key, the accepted algorithms and the claim rules of `opts`.
fn options(lua: &Lua, opts: &Table) -> mlua::Result<(Key, Vec<Alg>, ClaimRules)> {
    let bad = |m: String| convert::error(lua, format!("sluicegate.jwt.verify: {m}"));
    let alg = match opts.raw_get::<Option<String>>("alg")? {
        Some(a) => Some(Alg::parse(&a).ok_or_else(|| {
            bad(format!(
                "unknown algorithm `{a}`; supported: {}",
                Alg::names()
            ))
        })?),
        None => None,
    };
    let secret = opts.raw_get::<Option<mlua::LuaString>>("secret")?;
    let pem = opts.raw_get::<Option<String>>("pem")?;
    let jwk = opts.raw_get::<Option<Table>>("jwk")?;
    let given = [secret.is_some(), pem.is_some(), jwk.is_some()];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(bad("give exactly one of `secret`, `pem` and `jwk`".into()));
    }
    let key = if let Some(s) = secret {
        Key {
            kid: None,
            alg,
            material: Material::hmac(&s.as_bytes(), alg).map_err(bad)?,
        }
    } else if let Some(p) = pem {
        Key {
            kid: None,
            alg,
            material: keys::from_pem(&p).map_err(bad)?,
        }
    } else {
        let text = jwk
            .map(|t| super::cjson::encode_value(lua, &Value::Table(t)))
            .transpose()
            .map_err(bad)?
            .unwrap_or_default();
        let value: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| bad(format!("`jwk`: {e}")))?;
        let mut key = keys::from_jwk(&value).map_err(|e| match e {
            keys::JwkSkip::NotForSignatures => bad("`jwk` is for encryption (`use: enc`)".into()),
            keys::JwkSkip::Invalid(why) => bad(format!("`jwk`: {why}")),
        })?;
        key.kid = None;
        key.alg = alg.or(key.alg);
        key
    };
    if let Some(a) = alg.filter(|a| !key.material.fits(*a)) {
        return Err(bad(format!(
            "{} does not fit a {}",
            a.as_str(),
            key.material.kind()
        )));
    }
    let mut algorithms = Vec::new();
    for name in strings(lua, opts, "algorithms")? {
        algorithms
            .push(Alg::parse(&name).ok_or_else(|| bad(format!("unknown algorithm `{name}`")))?);
    }
    if algorithms.is_empty() {
        algorithms = Alg::ALL
            .into_iter()
            .filter(|a| key.accepts(*a, None))
            .collect();
    }
    let required = match opts.raw_get::<Value>("required_claims")? {
        Value::Nil => vec!["exp".to_string()],
        _ => strings(lua, opts, "required_claims")?,
    };
    let leeway = opts.raw_get::<Option<f64>>("leeway")?.unwrap_or(60.0);
    if !(0.0..=86_400.0).contains(&leeway) {
        return Err(bad("`leeway` must be 0..=86400 seconds".into()));
    }
    let rules = ClaimRules {
        issuers: strings(lua, opts, "issuer")?,
        audiences: strings(lua, opts, "audience")?,
        required,
        leeway_secs: leeway as u64,
    };
    Ok((key, algorithms, rules))
}

/// Registers `sluicegate.jwt`.
pub fn register(lua: &Lua, host: &Rc<Host>, sluicegate: &Table) -> mlua::Result<()> {
    let jwt = lua.create_table()?;
    let h = host.clone();
    jwt.raw_set(
        "claims",
        lua.create_function(move |lua, ()| {
            let claims = h.with_req(lua, "sluicegate.jwt.claims", Kinds::REQUEST, |s| {
                Ok(s.info.jwt_claims.clone())
            })?;
            match claims {
                None => Ok(Value::Nil),
                Some(map) => super::cjson::to_lua(lua, serde_json::Value::Object((*map).clone())),
            }
        })?,
    )?;
    jwt.raw_set(
        "verify",
        lua.create_function(|lua, (token, opts): (Value, Table)| {
            let (key, algorithms, rules) = options(lua, &opts)?;
            let mut out = mlua::MultiValue::new();
            let token = match &token {
                Value::String(s) => s.to_str().map(|t| t.to_string()).ok(),
                _ => None,
            };
            let result = match token {
                Some(t) => sluicegate_jwt::verify_with_keys(
                    t.trim(),
                    std::slice::from_ref(&key),
                    &algorithms,
                    &rules,
                    MAX_TOKEN_BYTES,
                )
                .map_err(|e| e.to_string()),
                None => Err("no token (expected a string)".to_string()),
            };
            match result {
                Ok(claims) => out.push_back(super::cjson::to_lua(
                    lua,
                    serde_json::Value::Object(claims),
                )?),
                Err(e) => {
                    out.push_back(Value::Nil);
                    out.push_back(Value::String(lua.create_string(e)?));
                }
            }
            Ok(out)
        })?,
    )?;
    sluicegate.raw_set("jwt", jwt)?;
    Ok(())
}
