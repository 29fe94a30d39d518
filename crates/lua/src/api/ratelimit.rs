//! `sluicegate.ratelimit`: rate limits decided by the script.
//!
//! - `check(key, {rate=, per=, burst=})` counts one request for `key` against the limit on
//!   the node's tables (the `rate_limit` plugin's `local` policy: shared by every worker,
//!   kept across reloads) and returns `allowed, info` with `info.limit`,
//!   `info.remaining`, `info.reset` and `info.retry_after` (seconds). Keys are shared by
//!   every script that uses the same limit: prefix them (`"login:" .. user`).
//! - `set_key(value)` (rewrite and access) gives the key a `rate_limit` plugin with
//!   `key: script` counts the request by.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use mlua::{Lua, Table, Value};
use sluicegate_ratelimit::local::{LocalLimiter, DEFAULT_MAX_KEYS};
use sluicegate_ratelimit::{Limit, Period};

use super::super::convert;
use super::super::vm::Host;
use super::super::{Kind, Kinds};

/// Where a key for the plugin still matters: before the access phase ends.
const SET_KEY: Kinds = Kinds(Kind::Rewrite.bit() | Kind::Access.bit());

/// Limiters this VM has looked up, so a check takes no lock once warm; beyond this many
/// distinct limits each check goes to the registry.
const CACHED: usize = 256;

/// The registry scope of every script limit.
const SCOPE: &str = "lua";

/// The longest key accepted.
const MAX_KEY: usize = 1024;

fn limit(lua: &Lua, spec: &Table) -> mlua::Result<Limit> {
    let bad = |m: String| convert::error(lua, format!("sluicegate.ratelimit.check: {m}"));
    let rate: f64 = spec
        .raw_get::<Option<f64>>("rate")?
        .ok_or_else(|| bad("`rate` is required".into()))?;
    let per: String = spec
        .raw_get::<Option<String>>("per")?
        .unwrap_or_else(|| "second".into());
    let period = Period::parse(&per).ok_or_else(|| {
        bad(format!(
            "unknown period `{per}`; expected one of: {}",
            Period::NAMES
        ))
    })?;
    let burst: Option<f64> = spec.raw_get("burst")?;
    let whole = |n: f64, what: &str| {
        if n.fract() == 0.0 && (0.0..=1e12).contains(&n) {
            Ok(n as u64)
        } else {
            Err(bad(format!("`{what}` must be a whole number")))
        }
    };
    let burst = burst.map(|b| whole(b, "burst")).transpose()?;
    Limit::new(whole(rate, "rate")?, period, burst).map_err(bad)
}

/// Registers `sluicegate.ratelimit`.
pub fn register(lua: &Lua, host: &Rc<Host>, sluicegate: &Table) -> mlua::Result<()> {
    let t = lua.create_table()?;
    let cache: Rc<RefCell<HashMap<Limit, LocalLimiter>>> = Rc::default();
    let check = lua.create_function(move |lua, (key, spec): (mlua::LuaString, Table)| {
        let key = key.as_bytes();
        if key.len() > MAX_KEY {
            return Err(convert::error(
                lua,
                format!("sluicegate.ratelimit.check: a key of at most {MAX_KEY} bytes"),
            ));
        }
        let limit = limit(lua, &spec)?;
        let cached = cache.borrow().get(&limit).cloned();
        let limiter = match cached {
            Some(l) => l,
            None => {
                let l = LocalLimiter::new(SCOPE, &[limit], DEFAULT_MAX_KEYS)
                    .map_err(|e| convert::error(lua, format!("sluicegate.ratelimit.check: {e}")))?;
                let mut c = cache.borrow_mut();
                if c.len() < CACHED {
                    c.insert(limit, l.clone());
                }
                l
            }
        };
        let v = limiter.check(&key);
        let info = lua.create_table()?;
        info.raw_set("limit", v.limit)?;
        info.raw_set("remaining", v.remaining)?;
        info.raw_set("reset", v.reset.as_secs_f64())?;
        info.raw_set("retry_after", v.retry_after.as_secs_f64())?;
        Ok((v.admitted, info))
    })?;
    t.raw_set("check", check)?;
    let h = host.clone();
    let set_key = lua.create_function(move |lua, key: Value| {
        let key = match &key {
            Value::String(s) => s.to_str().map(|s| s.to_string()).map_err(|_| {
                convert::error(
                    lua,
                    "sluicegate.ratelimit.set_key: the key must be UTF-8 text",
                )
            })?,
            Value::Integer(n) => n.to_string(),
            Value::Number(n) => n.to_string(),
            other => {
                return Err(convert::error(
                    lua,
                    format!(
                        "sluicegate.ratelimit.set_key: expected a string, got {}",
                        other.type_name()
                    ),
                ))
            }
        };
        if key.len() > MAX_KEY {
            return Err(convert::error(
                lua,
                format!("sluicegate.ratelimit.set_key: a key of at most {MAX_KEY} bytes"),
            ));
        }
        h.with_req(lua, "sluicegate.ratelimit.set_key", SET_KEY, |state| {
            state.ratelimit_key = Some(key);
            Ok(())
        })
    })?;
    t.raw_set("set_key", set_key)?;
    sluicegate.raw_set("ratelimit", t)?;
    Ok(())
}
