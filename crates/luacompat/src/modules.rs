//! Built-in modules Envoy filter scripts `require`:
//!
//! - `json`: the API of rxi's json.lua (`encode`, `decode`; JSON `null` decodes to `nil`,
//!   errors raise) on top of our `cjson`;
//! - `jwt`: `decode(token[, key])`. Without a key it only decodes the payload and does
//!   **not** verify anything (what Envoy users' `jwt` modules do, for routing on claims
//!   an earlier filter verified); with a key (an HMAC secret, a PEM public key, or an
//!   options table as `sluicegate.jwt.verify` takes) it verifies signature and times
//!   with the gateway's JWT code and returns the claims or `nil, err`.

use std::rc::Rc;

use mlua::{Lua, Table, Value};
use sluicegate_lua::vm::Host;

const JSON: &str = r#"
local cjson = ...
local null = cjson.null
local function strip(v)
  if v == null then return nil end
  if type(v) == "table" then
    for k, x in pairs(v) do
      if x == null then v[k] = nil elseif type(x) == "table" then strip(x) end
    end
  end
  return v
end
local M = { _version = "0.1.2" }
function M.encode(v) return cjson.encode(v) end
function M.decode(s)
  if type(s) ~= "string" then
    error("expected argument of type string, got " .. type(s), 2)
  end
  return strip(cjson.decode(s))
end
return M
"#;

const JWT: &str = r#"
local cjson, decode_b64, verify = ...
local M = {}
function M.decode(token, key)
  if type(token) ~= "string" then return nil, "the token must be a string" end
  token = string.gsub(token, "^%s*[Bb][Ee][Aa][Rr][Ee][Rr]%s+", "")
  if key ~= nil then
    local opts = key
    if type(key) == "string" then
      opts = string.find(key, "-----BEGIN", 1, true) and { pem = key } or { secret = key }
    elseif type(key) ~= "table" then
      error("jwt.decode: the key must be a string or an options table", 2)
    end
    return verify(token, opts)
  end
  local payload = string.match(token, "^[^.]+%.([^.]+)%.[^.]*$")
  if not payload then return nil, "invalid token: expected three dot-separated parts" end
  local text = decode_b64(payload)
  if not text then return nil, "invalid token: the payload is not base64url" end
  local ok, claims = pcall(cjson.decode, text)
  if not ok or type(claims) ~= "table" then
    return nil, "invalid token: the payload is not a JSON object"
  end
  return claims
end
return M
"#;

/// Registers `json` and `jwt` (an [`Extension`](sluicegate_lua::Extension)).
pub fn register(lua: &Lua, _host: &Rc<Host>, modules: &Table, globals: &Table) -> mlua::Result<()> {
    let cjson: Table = modules.raw_get("cjson")?;
    let json: Table = lua.load(JSON).set_name("=json").call(&cjson)?;
    modules.raw_set("json", json)?;
    let sluicegate: Table = globals.raw_get("sluicegate")?;
    let crypto: Table = sluicegate.raw_get("crypto")?;
    let decode_b64: Value = crypto.raw_get("decode_base64url")?;
    let verify: Value = sluicegate.raw_get::<Table>("jwt")?.raw_get("verify")?;
    let jwt: Table = lua
        .load(JWT)
        .set_name("=jwt")
        .call((cjson, decode_b64, verify))?;
    modules.raw_set("jwt", jwt)?;
    Ok(())
}
