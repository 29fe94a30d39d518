-- ngx.req.*: reading and changing the request.
local t = require "sluicegate.test"
local cjson = require "cjson"

local function run(phase, code, req)
  return t.script { phase = phase, name = "req", code = code }:run(req or {})
end

describe("ngx.req.get_headers", function()
  it("returns lower-case names, arrays for repeated headers and case-insensitive lookups", function()
    local res = run("content", [[
      local h = ngx.req.get_headers()
      ngx.say(h["x-one"], " ", h["X-One"], " ", h.x_one, " ", type(h["x-two"]), " ", table.concat(h["x-two"], ","))
    ]], { headers = { ["X-One"] = "1", ["X-Two"] = { "a", "b" } } })
    assert.equal("1 1 1 table a,b\n", res.body)
  end)

  it("stops at max_headers and says so", function()
    local res = run("content", [[
      local h, err = ngx.req.get_headers(2)
      local n = 0 for _ in pairs(h) do n = n + 1 end
      ngx.say(n, " ", err)
    ]], { headers = { a = "1", b = "2", c = "3", d = "4" } })
    assert.equal("2 truncated\n", res.body)
  end)
end)

describe("ngx.req.set_header and clear_header", function()
  it("set replaces, a table sets several values, nil and clear_header remove", function()
    local res = run("access", [[
      ngx.req.set_header("X-Set", "v")
      ngx.req.set_header("X-Multi", { "a", "b" })
      ngx.req.set_header("X-Gone", nil)
      ngx.req.clear_header("X-Also-Gone")
      ngx.req.set_header("X-Num", 42)
    ]], { headers = { ["X-Set"] = "old", ["X-Gone"] = "1", ["X-Also-Gone"] = "1" } })
    assert.is_true(res.continued)
    assert.equal("v", res.request.headers["x-set"])
    assert.same({ "a", "b" }, res.request.headers["x-multi"])
    assert.is_nil(res.request.headers["x-gone"])
    assert.is_nil(res.request.headers["x-also-gone"])
    assert.equal("42", res.request.headers["x-num"])
  end)

  it("rejects invalid header names", function()
    local res = run("access", [[ngx.req.set_header("bad name", "x")]])
    assert.equal(500, res.status)
    assert.matches("invalid header name", res.error)
  end)
end)

describe("ngx.req uri args", function()
  it("get_uri_args decodes, repeats become arrays, bare keys are true", function()
    local res = run("content", [[
      local a = ngx.req.get_uri_args()
      ngx.say(a.q, "|", table.concat(a.tag, ","), "|", tostring(a.flag), "|", a.empty, "|", a["k y"])
    ]], { uri = "/?q=a%20b+c&tag=x&tag=y&flag&empty=&k%20y=v" })
    assert.equal("a b c|x,y|true||v\n", res.body)
  end)

  it("set_uri_args takes a table or a string", function()
    local res = run("access", [[ngx.req.set_uri_args({ b = "x y", a = 1, flag = true, list = { 1, 2 } })]], { uri = "/p?old=1" })
    assert.equal("/p?a=1&b=x%20y&flag&list=1&list=2", res.request.uri)
    res = run("access", [[ngx.req.set_uri_args("z=9")]], { uri = "/p?old=1" })
    assert.equal("/p?z=9", res.request.uri)
  end)

  it("set_uri changes the path and keeps the query", function()
    local res = run("rewrite", [[ngx.req.set_uri("/new path")]], { uri = "/old?x=1" })
    assert.equal("/new%20path?x=1", res.request.uri)
  end)
end)

describe("ngx.req method and body", function()
  it("get_method and set_method", function()
    local res = run("access", [[
      assert(ngx.req.get_method() == "POST")
      ngx.req.set_method(ngx.HTTP_PUT)
    ]], { method = "POST" })
    assert.equal("PUT", res.request.method)
  end)

  it("reads, replaces and parses the body", function()
    local res = run("content", [[
      ngx.req.read_body()
      local body = ngx.req.get_body_data()
      local args = ngx.req.get_post_args()
      ngx.req.set_body_data("replaced")
      ngx.say(body, " ", args.a, " ", args.b)
    ]], { method = "POST", body = "a=1&b=x+y" })
    assert.equal("a=1&b=x+y 1 x y\n", res.body)
    assert.equal("replaced", res.request.body)
  end)

  it("get_body_data is nil without a body", function()
    assert.equal("nil\n", run("content", "ngx.req.read_body() ngx.say(ngx.req.get_body_data())").body)
  end)

  it("start_time and http_version", function()
    local res = run("content", [[ngx.say(math.abs(ngx.req.start_time() - ngx.now()) < 5, " ", ngx.req.http_version())]])
    assert.equal("true 1.1\n", res.body)
  end)
end)

describe("phase checks", function()
  it("name the function and the phase", function()
    local res = run("header_filter", [[ngx.say("x")]])
    assert.equal(500, res.status)
    assert.matches("ngx.say is not allowed in the header_filter phase", res.error, 1, true)
    res = run("header_filter", [[ngx.sleep(0.01)]])
    assert.matches("ngx.sleep is not allowed in the header_filter phase", res.error, 1, true)
    res = run("log", [[ngx.req.read_body()]])
    assert.matches("ngx.req.read_body is not allowed in the log phase", res.error, 1, true)
    res = run("body_filter", [[ngx.redirect("/x")]])
    assert.matches("ngx.redirect is not allowed in the body_filter phase", res.error, 1, true)
  end)

  it("a waiting function reached through a computed name asks to be named", function()
    local res = run("access", [[local f = ngx["sl" .. "eep"] f(0)]])
    assert.equal(500, res.status)
    assert.matches("ngx.sleep cannot wait in this call", res.error, 1, true)
    assert.equal("ok\n", run("access", [[ngx.sleep(0) ngx.say("ok")]]).body)
  end)

  it("ngx.get_phase tells the phase", function()
    assert.equal("access", run("access", "ngx.say(ngx.get_phase())").body:sub(1, -2))
    assert.equal("content\n", run("content", "ngx.say(ngx.get_phase())").body)
  end)
end)
