//! `sluicegate.queue.enqueue(queue, {method=, path=, headers=, body=})`: appends a message
//! to a configured durable queue and returns its id once it is fsynced (`nil, err`
//! otherwise). The script waits for the fsync without blocking the worker; the wait does
//! not count against its CPU budget. Delivery works as for any message of that queue
//! (see docs/queue.md).

use std::rc::Rc;

use bytes::Bytes;
use http::{HeaderMap, Method};
use mlua::{Lua, Table, Value};

use super::super::vm::Host;
use super::super::{convert, Kinds, ScriptMessage};

fn message(lua: &Lua, t: &Table, request_id: String) -> mlua::Result<ScriptMessage> {
    let method = match t.raw_get::<Option<String>>("method")? {
        Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| convert::error(lua, format!("bad method `{m}`")))?,
        None => Method::POST,
    };
    let path: String = t
        .raw_get::<Option<String>>("path")?
        .unwrap_or_else(|| "/".to_string());
    let mut headers = HeaderMap::new();
    if let Some(h) = t.raw_get::<Option<Table>>("headers")? {
        for kv in h.pairs::<mlua::LuaString, Value>() {
            let (k, v) = kv?;
            super::req::set_header(lua, &mut headers, &k.as_bytes(), &v, false)?;
        }
    }
    let body = match t.raw_get::<Option<mlua::LuaString>>("body")? {
        Some(b) => Bytes::copy_from_slice(&b.as_bytes()),
        None => Bytes::new(),
    };
    Ok(ScriptMessage {
        method,
        target: path,
        headers,
        body,
        request_id,
    })
}

/// Registers `sluicegate.queue`.
pub fn register(lua: &Lua, host: &Rc<Host>, sluicegate: &Table) -> mlua::Result<()> {
    let queue = lua.create_table()?;
    let h = host.clone();
    let enqueue = lua.create_async_function(move |lua, (name, msg): (String, Table)| {
        let prepared = h
            .check(&lua, "sluicegate.queue.enqueue", Kinds::YIELD)
            .and_then(|_| h.check_async(&lua, "sluicegate.queue.enqueue"))
            .and_then(|_| {
                let request_id = h
                    .cur
                    .borrow()
                    .as_ref()
                    .map(|s| s.info.request_id.to_str().unwrap_or("").to_string())
                    .unwrap_or_default();
                message(&lua, &msg, request_id)
            });
        let queues = (h.rt.queues)();
        async move {
            let req = prepared?;
            let result = match queues {
                Some(q) => q.enqueue(name, req).await,
                None => Err("no durable queues are open here".to_string()),
            };
            let mut out = mlua::MultiValue::new();
            match result {
                Ok(id) => out.push_back(Value::Number(id as f64)),
                Err(e) => {
                    out.push_back(Value::Nil);
                    out.push_back(Value::String(lua.create_string(e)?));
                }
            }
            Ok(out)
        }
    })?;
    queue.raw_set("enqueue", enqueue)?;
    sluicegate.raw_set("queue", queue)?;
    Ok(())
}
