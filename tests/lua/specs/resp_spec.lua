-- The response side: ngx.exit, ngx.say/print, ngx.header, ngx.status, ngx.redirect, filters.
local t = require "sluicegate.test"

local function run(phase, code, req)
  return t.script { phase = phase, name = "resp", code = code }:run(req or {})
end

describe("ngx.exit", function()
  it("from access without a body answers the status with a default page", function()
    local res = run("access", "return ngx.exit(ngx.HTTP_FORBIDDEN)")
    assert.equal(403, res.status)
    assert.matches("403 Forbidden", res.body)
    assert.equal("text/html", res.headers["content-type"])
  end)

  it("from access with a body answers with the output and the status set before it", function()
    local res = run("access", [[
      ngx.status = 401
      ngx.header["WWW-Authenticate"] = "Bearer"
      ngx.say("denied")
      return ngx.exit(ngx.HTTP_UNAUTHORIZED)
    ]])
    assert.equal(401, res.status)
    assert.equal("denied\n", res.body)
    assert.equal("Bearer", res.headers["www-authenticate"])
  end)

  it("keeps the status in force when output started, as OpenResty does", function()
    local res = run("access", [[ngx.say("partial") return ngx.exit(500)]])
    assert.equal(200, res.status)
    assert.equal("partial\n", res.body)
  end)

  it("ngx.OK ends the phase and the request goes on", function()
    local res = run("access", [[ngx.exit(ngx.OK) error("not reached")]])
    assert.is_true(res.continued)
  end)

  it("ngx.ERROR answers 500", function()
    assert.equal(500, run("access", "return ngx.exit(ngx.ERROR)").status)
  end)

  it("cannot be caught by pcall", function()
    local res = run("access", [[
      pcall(ngx.exit, 404)
      ngx.req.set_header("X-Not", "reached")
    ]])
    assert.equal(404, res.status)
  end)

  it("2xx without output answers an empty body", function()
    local res = run("access", "return ngx.exit(204)")
    assert.equal(204, res.status)
    assert.equal("", res.body)
  end)

  it("in header_filter stops the script", function()
    local res = run("header_filter", [[ngx.header["X-A"] = "1" ngx.exit(ngx.OK) ngx.header["X-B"] = "2"]])
    assert.equal("1", res.headers["x-a"])
    assert.is_nil(res.headers["x-b"])
    assert.is_nil(res.error)
  end)
end)

describe("ngx.say and ngx.print", function()
  it("print strings, numbers, booleans, nil, ngx.null and nested arrays", function()
    local res = run("content", [[
      ngx.print("a", 1, 2.5, true, nil, ngx.null, { "x", { "y", 3 } })
      ngx.say()
      ngx.say("end")
    ]])
    assert.equal("a12.5truenilnullxy3\nend\n", res.body)
    assert.equal(200, res.status)
    assert.equal("text/plain", res.headers["content-type"])
  end)

  it("return 1, or nil and an error after ngx.eof", function()
    local res = run("content", [[
      local ok = ngx.say("x")
      ngx.eof()
      local ok2, err = ngx.say("y")
      ngx.log(ngx.ERR, tostring(ok), " ", tostring(ok2), " ", err)
    ]])
    assert.equal("x\n", res.body)
    assert.matches("1 nil seen eof", res.logs[1], 1, true)
  end)

  it("reject tables with functions", function()
    local res = run("content", "ngx.say({ function() end })")
    assert.equal(500, res.status)
  end)
end)

describe("ngx.header", function()
  it("sets, reads, replaces and removes response headers; _ means -", function()
    local res = run("content", [[
      ngx.header.content_type = "application/json"
      ngx.header["X-Multi"] = { "a", "b" }
      ngx.header["X-Gone"] = "x"
      ngx.header["X-Gone"] = nil
      local m = ngx.header["x_multi"]
      ngx.say(ngx.header["Content-Type"], " ", type(m), " ", m[1], m[2], " ", tostring(ngx.header["X-Gone"]))
    ]])
    assert.equal("application/json", res.headers["content-type"])
    assert.same({ "a", "b" }, res.headers["x-multi"])
    assert.equal("application/json table ab nil\n", res.body)
  end)

  it("writes numbers as Lua prints them and refuses values that are not text", function()
    local res = run("content", [[
      ngx.header["X-Count"] = 5
      ngx.header["X-Frac"] = 1.5
      local ok, err = pcall(function() ngx.header["X-Bad"] = true end)
      local ok2, err2 = pcall(function() ngx.header["X-Split"] = "a\r\nb: c" end)
      ngx.say(tostring(ok), " ", tostring(ok2))
    ]])
    assert.equal("5", res.headers["x-count"])
    assert.equal("1.5", res.headers["x-frac"])
    assert.is_nil(res.headers["x-bad"])
    assert.is_nil(res.headers["x-split"])
    assert.equal("false false\n", res.body)
  end)

  it("is ignored with an error log once output was sent", function()
    local res = run("content", [[ngx.say("x") ngx.header["X-Late"] = "1" ngx.status = 404]])
    assert.is_nil(res.headers["x-late"])
    assert.equal(200, res.status)
    assert.matches("after sending out response headers", res.logs[1], 1, true)
  end)

  it("in header_filter changes the response", function()
    local res = run("header_filter", [[
      ngx.header["X-Gateway"] = "lua"
      ngx.header["Server"] = nil
      ngx.header["Set-Cookie"] = { "a=1", "b=2" }
      if ngx.status == 502 then ngx.status = 503 end
    ]], { response = { status = 502, headers = { Server = "origin", ["X-Up"] = "1" } } })
    assert.equal(503, res.status)
    assert.equal("lua", res.headers["x-gateway"])
    assert.is_nil(res.headers["server"])
    assert.equal("1", res.headers["x-up"])
    assert.same({ "a=1", "b=2" }, res.headers["set-cookie"])
  end)

  it("set in access applies to the response that comes later", function()
    -- A continued request keeps the headers for the header filter (checked end to end).
    local res = run("access", [[ngx.header["X-From-Access"] = "1"]])
    assert.is_true(res.continued)
  end)
end)

describe("ngx.status", function()
  it("is 0 before it is set in content, then what was set", function()
    local res = run("content", [[local before = ngx.status ngx.status = 201 ngx.say(before, " ", ngx.status)]])
    assert.equal(201, res.status)
    assert.equal("0 201\n", res.body)
  end)

  it("rejects invalid codes", function()
    assert.equal(500, run("content", "ngx.status = 42").status)
  end)
end)

describe("ngx.redirect", function()
  it("defaults to 302 with a Location header", function()
    local res = run("access", [[return ngx.redirect("/login?next=%2F")]])
    assert.equal(302, res.status)
    assert.equal("/login?next=%2F", res.headers["location"])
  end)

  it("takes 301, 303, 307 and 308 and refuses others", function()
    assert.equal(301, run("rewrite", [[return ngx.redirect("https://example.com/", 301)]]).status)
    assert.equal(308, run("content", [[return ngx.redirect("/x", ngx.HTTP_PERMANENT_REDIRECT)]]).status)
    local res = run("access", [[return ngx.redirect("/x", 200)]])
    assert.equal(500, res.status)
    assert.matches("only 301, 302, 303, 307 and 308", res.error, 1, true)
  end)

  it("fails after output was sent", function()
    local res = run("content", [[ngx.say("x") ngx.redirect("/y")]])
    assert.matches("after sending out the headers", res.error, 1, true)
  end)
end)

describe("body_filter and log", function()
  it("ngx.arg[1] rewrites chunks and ngx.arg[2] tells the end", function()
    local res = run("body_filter", [[
      local chunk, eof = ngx.arg[1], ngx.arg[2]
      ngx.arg[1] = string.upper(chunk)
      if eof then ngx.arg[1] = ngx.arg[1] .. "<END>" end
    ]], { response = { body = { "hello ", "world" } } })
    assert.equal("HELLO WORLD<END>", res.body)
  end)

  it("ngx.arg[2] = true drops the rest of the body", function()
    local res = run("body_filter", [[ngx.arg[2] = true]], { response = { body = { "first", "second" } } })
    assert.equal("first", res.body)
  end)

  it("the log phase reads the final status", function()
    local res = run("log", [[ngx.log(ngx.INFO, "status=", ngx.var.status, " ", ngx.status)]], { response = { status = 418 } })
    assert.matches("status=418 418", res.logs[1], 1, true)
  end)
end)
