//! `ngx.shared.DICT`: the Lua face of [`dict`](super::super::dict). `ngx.shared.NAME`
//! resolves a dictionary declared under `lua.shared_dicts` (nil otherwise); the handle is
//! cached per worker. Return values follow OpenResty (`ok, err, forcible`, `nil, "not
//! found"`, ...).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use mlua::{AnyUserData, Lua, MultiValue, Table, UserData, UserDataMethods, Value};

use super::super::convert;
use super::super::dict::{Dict, DictError, DictValue, SetMode};
use super::super::vm::Host;

/// A handle to one dictionary.
pub struct DictHandle(pub Arc<Dict>);

fn key_of(lua: &Lua, v: &Value) -> mlua::Result<Vec<u8>> {
    match convert::as_bytes(v) {
        Some(k) if !k.is_empty() && k.len() <= 65535 => Ok(k),
        Some(_) => Err(convert::error(
            lua,
            "the key must be a non-empty string of at most 65535 bytes",
        )),
        None => Err(convert::error(
            lua,
            format!("bad key type: {}", v.type_name()),
        )),
    }
}

fn value_of(lua: &Lua, v: &Value) -> mlua::Result<Option<DictValue>> {
    Ok(match v {
        Value::Nil => None,
        Value::String(s) => Some(DictValue::Str(s.as_bytes().to_vec())),
        Value::Integer(i) => Some(DictValue::Num(*i as f64)),
        Value::Number(n) => Some(DictValue::Num(*n)),
        Value::Boolean(b) => Some(DictValue::Bool(*b)),
        other => {
            return Err(convert::error(
                lua,
                format!("bad value type: {}", other.type_name()),
            ))
        }
    })
}

fn to_lua(lua: &Lua, v: DictValue) -> mlua::Result<Value> {
    Ok(match v {
        DictValue::Str(s) => Value::String(lua.create_string(s)?),
        DictValue::Num(n) => Value::Number(n),
        DictValue::Bool(b) => Value::Boolean(b),
    })
}

fn ttl_of(lua: &Lua, secs: Option<f64>) -> mlua::Result<Option<Duration>> {
    match secs {
        Some(s) if !(s.is_finite() && s >= 0.0) => Err(convert::error(
            lua,
            "bad exptime: must be a non-negative number",
        )),
        Some(s) => Ok(Some(Duration::from_secs_f64(s))),
        None => Ok(None),
    }
}

fn multi(values: Vec<Value>) -> MultiValue {
    values.into_iter().collect()
}

fn err_str(lua: &Lua, e: DictError) -> mlua::Result<Value> {
    lua.create_string(e.as_str()).map(Value::String)
}

/// `ok, err, forcible` of a write.
fn write_result(lua: &Lua, r: Result<bool, DictError>) -> mlua::Result<MultiValue> {
    Ok(match r {
        Ok(forcible) => multi(vec![
            Value::Boolean(true),
            Value::Nil,
            Value::Boolean(forcible),
        ]),
        Err(e) => multi(vec![
            Value::Boolean(false),
            err_str(lua, e)?,
            Value::Boolean(false),
        ]),
    })
}

fn add_write(
    methods: &mut impl UserDataMethods<DictHandle>,
    name: &'static str,
    mode: SetMode,
    evict: bool,
) {
    methods.add_method(
        name,
        move |lua, this, (key, value, exptime, flags): (Value, Value, Option<f64>, Option<u32>)| {
            let key = key_of(lua, &key)?;
            let value = value_of(lua, &value)?;
            let ttl = ttl_of(lua, exptime)?;
            if value.is_none() && mode != SetMode::Set {
                return Err(convert::error(
                    lua,
                    format!("{name}: a nil value is only allowed in set (it deletes)"),
                ));
            }
            write_result(
                lua,
                this.0
                    .set(&key, value, ttl, flags.unwrap_or(0), mode, evict),
            )
        },
    );
}

impl UserData for DictHandle {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        for (stale, name) in [(false, "get"), (true, "get_stale")] {
            methods.add_method(name, move |lua, this, key: Value| {
                let key = key_of(lua, &key)?;
                Ok(match this.0.get(&key, stale) {
                    None => multi(vec![Value::Nil]),
                    Some(f) => {
                        let flags = if f.flags == 0 {
                            Value::Nil
                        } else {
                            Value::Integer(i64::from(f.flags))
                        };
                        let mut out = vec![to_lua(lua, f.value)?, flags];
                        if stale {
                            out.push(Value::Boolean(f.stale));
                        }
                        multi(out)
                    }
                })
            });
        }
        add_write(methods, "set", SetMode::Set, true);
        add_write(methods, "safe_set", SetMode::Set, false);
        add_write(methods, "add", SetMode::Add, true);
        add_write(methods, "safe_add", SetMode::Add, false);
        add_write(methods, "replace", SetMode::Replace, true);
        methods.add_method(
            "incr",
            |lua, this, (key, by, init, init_ttl): (Value, f64, Option<f64>, Option<f64>)| {
                let key = key_of(lua, &key)?;
                let ttl = ttl_of(lua, init_ttl)?;
                Ok(match this.0.incr(&key, by, init, ttl) {
                    Ok((n, forcible)) => {
                        multi(vec![Value::Number(n), Value::Nil, Value::Boolean(forcible)])
                    }
                    Err(e) => multi(vec![Value::Nil, err_str(lua, e)?]),
                })
            },
        );
        methods.add_method("delete", |lua, this, key: Value| {
            this.0.delete(&key_of(lua, &key)?);
            Ok(())
        });
        methods.add_method("ttl", |lua, this, key: Value| {
            let key = key_of(lua, &key)?;
            Ok(match this.0.ttl(&key) {
                Some(None) => multi(vec![Value::Number(0.0)]),
                Some(Some(d)) => multi(vec![Value::Number((d.as_millis() as f64) / 1000.0)]),
                None => multi(vec![Value::Nil, err_str(lua, DictError::NotFound)?]),
            })
        });
        methods.add_method("expire", |lua, this, (key, exptime): (Value, f64)| {
            let key = key_of(lua, &key)?;
            let ttl = ttl_of(lua, Some(exptime))?.unwrap_or_default();
            Ok(if this.0.expire(&key, ttl) {
                multi(vec![Value::Boolean(true)])
            } else {
                multi(vec![Value::Nil, err_str(lua, DictError::NotFound)?])
            })
        });
        methods.add_method("flush_all", |_, this, ()| {
            this.0.flush_all();
            Ok(())
        });
        methods.add_method("flush_expired", |_, this, max: Option<usize>| {
            Ok(this.0.flush_expired(max.unwrap_or(0)))
        });
        methods.add_method("get_keys", |lua, this, max: Option<usize>| {
            let keys = this.0.keys(max.unwrap_or(1024));
            lua.create_sequence_from(
                keys.into_iter()
                    .map(|k| lua.create_string(k))
                    .collect::<mlua::Result<Vec<_>>>()?,
            )
        });
        methods.add_method("capacity", |_, this, ()| Ok(this.0.capacity()));
        methods.add_method("free_space", |_, this, ()| Ok(this.0.free_space()));
        methods.add_meta_method("__tostring", |_, this, ()| {
            Ok(format!("ngx.shared.{}", this.0.name()))
        });
    }
}

/// Registers `ngx.shared`.
pub fn register(lua: &Lua, host: &Rc<Host>, ngx: &Table) -> mlua::Result<()> {
    let cache: RefCell<HashMap<Vec<u8>, AnyUserData>> = RefCell::new(HashMap::new());
    let h = host.clone();
    let meta = lua.create_table()?;
    meta.raw_set(
        "__index",
        lua.create_function(
            move |lua, (_, name): (bool, mlua::LuaString)| -> mlua::Result<Value> {
                let key = name.as_bytes().to_vec();
                if let Some(ud) = cache.borrow().get(&key) {
                    return Ok(Value::UserData(ud.clone()));
                }
                let text = name.to_string_lossy();
                let settings = (h.rt.settings)();
                let Some(size) = settings.dict_size(&text) else {
                    return Ok(Value::Nil);
                };
                let ud = lua.create_userdata(DictHandle(h.rt.dicts.get(&text, size)))?;
                cache.borrow_mut().insert(key, ud.clone());
                Ok(Value::UserData(ud))
            },
        )?,
    )?;
    meta.raw_set(
        "__newindex",
        lua.create_function(|lua, _: MultiValue| -> mlua::Result<()> {
            Err(convert::error(
                lua,
                "ngx.shared is read-only: declare dictionaries under lua.shared_dicts",
            ))
        })?,
    )?;
    let shared = lua.create_table()?;
    shared.set_metatable(Some(meta))?;
    ngx.raw_set("shared", shared)?;
    Ok(())
}
