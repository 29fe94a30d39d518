//! Cosockets through the real gateway: rewrite and access scripts talking to a real Redis
//! over `ngx.socket.tcp` (a user module holds the small RESP client, as lua-resty-redis
//! would), with pooled connections shared by the requests of a worker.

use crate::support::upstream::Upstream;
use crate::support::{get, Config};

const RESP_MODULE: &str = r##"
local M = {}
local function reply(sock)
  local line, err = sock:receive()
  if not line then return nil, err end
  local kind, rest = line:sub(1, 1), line:sub(2)
  if kind == "$" then
    local n = tonumber(rest)
    if n < 0 then return ngx.null end
    local data = sock:receive(n + 2)
    return data and data:sub(1, n)
  elseif kind == ":" then return tonumber(rest)
  elseif kind == "+" then return rest
  end
  return nil, rest
end
function M.call(port, ...)
  local sock = ngx.socket.tcp()
  sock:settimeout(1000)
  local ok, err = sock:connect("127.0.0.1", port)
  if not ok then return nil, err end
  local args, req = { ... }, { "*" .. select("#", ...) .. "\r\n" }
  for _, a in ipairs(args) do req[#req + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n" end
  assert(sock:send(req))
  local v, e = reply(sock)
  sock:setkeepalive(10000, 8)
  return v, e
end
return M
"##;

#[tokio::test]
async fn rewrite_and_access_scripts_reach_redis_over_cosockets() {
    let redis = sluicegate_testkit::redis::RedisServer::start();
    let up = Upstream::echo();
    let body = format!(
        r#"
lua: {{package_path: "."}}
upstreams: [{{name: app, targets: ["{{{{app}}}}"]}}]
routes:
  - upstream: app
    plugins:
      - name: lua
        config:
          phase: rewrite
          code: |
            local redis = require "resp"
            redis.call({port}, "INCR", "hits")
      - name: lua
        config:
          phase: access
          code: |
            local redis = require "resp"
            local hits, err = redis.call({port}, "GET", "hits")
            if not hits then return ngx.exit(502) end
            ngx.req.set_header("x-hits", hits)
"#,
        port = redis.port()
    );
    let gw = Config::new(&body)
        .var("app", up.addr())
        .file("resp.lua", RESP_MODULE)
        .start();
    for _ in 0..3 {
        assert_eq!(get(gw.addr, "/").await.status, 200);
    }
    let seen: Vec<String> = up
        .requests()
        .iter()
        .map(|s| s.header("x-hits").to_string())
        .collect();
    assert_eq!(seen, ["1", "2", "3"]);
    drop(redis);
    // Redis gone: the access script's cosocket fails cleanly and the script answers 502.
    assert_eq!(get(gw.addr, "/").await.status, 502);
}
