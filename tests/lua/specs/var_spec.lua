-- ngx.var.*: request variables with nginx's semantics.
local t = require "sluicegate.test"

local function var(name)
  return t.script { phase = "content", name = "var", code = "ngx.print(tostring(ngx.var." .. name .. "))" }
end

describe("ngx.var", function()
  it("host is the Host header, lower-cased, without port", function()
    assert.equal("api.example.com", var("host"):run { headers = { Host = "API.Example.com:8443" } }.body)
  end)

  it("uri is the decoded path; request_uri keeps path and query as received", function()
    assert.equal("/a b/c", var("uri"):run { uri = "/a%20b/c?x=1" }.body)
    assert.equal("/a%20b/c?x=1", var("request_uri"):run { uri = "/a%20b/c?x=1" }.body)
  end)

  it("args and query_string are the raw query, nil without one", function()
    assert.equal("a=1&b=%20", var("args"):run { uri = "/p?a=1&b=%20" }.body)
    assert.equal("a=1", var("query_string"):run { uri = "/p?a=1" }.body)
    assert.equal("nil", var("args"):run { uri = "/p" }.body)
    assert.equal("?", var("is_args"):run { uri = "/p?a" }.body)
    assert.equal("", var("is_args"):run { uri = "/p" }.body)
  end)

  it("arg_NAME is the raw, still-escaped value, found without regard to case", function()
    assert.equal("a%20b+c", var("arg_name"):run { uri = "/?Name=a%20b+c" }.body)
    assert.equal("", var("arg_flag"):run { uri = "/?flag&x=1" }.body)
    assert.equal("1", var("arg_x"):run { uri = "/?x=1&x=2" }.body)
    assert.equal("nil", var("arg_missing"):run { uri = "/?x=1" }.body)
    -- decoding is explicit, as in OpenResty
    local s = t.script { phase = "content", code = "ngx.print(ngx.unescape_uri(ngx.var.arg_q))" }
    assert.equal("a b c", s:run { uri = "/?q=a%20b+c" }.body)
  end)

  it("http_NAME reads headers with _ for -, joining repeated ones", function()
    assert.equal("k1", var("http_x_api_key"):run { headers = { ["X-Api-Key"] = "k1" } }.body)
    assert.equal("a, b", var("http_x_multi"):run { headers = { ["X-Multi"] = { "a", "b" } } }.body)
    assert.equal("nil", var("http_x_absent"):run {}.body)
  end)

  it("cookie_NAME reads one cookie by exact name", function()
    local headers = { Cookie = { "a=1; session=abc", "theme=dark" } }
    assert.equal("abc", var("cookie_session"):run { headers = headers }.body)
    assert.equal("dark", var("cookie_theme"):run { headers = headers }.body)
    assert.equal("nil", var("cookie_Session"):run { headers = headers }.body)
  end)

  it("knows the client, method, scheme and request id", function()
    assert.equal("10.1.2.3", var("remote_addr"):run { remote_addr = "10.1.2.3:5555" }.body)
    assert.equal("5555", var("remote_port"):run { remote_addr = "10.1.2.3:5555" }.body)
    assert.equal("POST", var("request_method"):run { method = "POST" }.body)
    assert.equal("https", var("scheme"):run { scheme = "https" }.body)
    assert.equal("http", var("scheme"):run {}.body)
    assert.equal("rid-1", var("request_id"):run { request_id = "rid-1" }.body)
  end)

  it("args can be assigned; other variables cannot", function()
    local s = t.script { phase = "access", code = "ngx.var.args = 'x=2'" }
    assert.equal("/?x=2", s:run { uri = "/?x=1" }.request.uri)
    local bad = t.script { phase = "access", name = "bad", code = "ngx.var.foo = 'x'" }
    local res = bad:run {}
    assert.equal(500, res.status)
    assert.matches("variable \"foo\" not found for writing", res.error)
  end)

  it("is not available in timers", function()
    local s = t.script { phase = "content", name = "tm", code = [[
      local ok = ngx.timer.at(0, function() local _ = ngx.var.uri end)
      ngx.say(ok)
    ]] }
    assert.equal("true\n", s:run {}.body)
  end)
end)
