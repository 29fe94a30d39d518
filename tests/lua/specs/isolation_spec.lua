-- One script cannot change what another sees, and cannot leave the sandbox.
local t = require "sluicegate.test"

local function script(name, code, phase)
  return t.script { phase = phase or "content", name = name, code = code }
end

describe("isolation", function()
  it("globals of one script are invisible to other scripts and to later calls", function()
    local a = script("a", [[leaked = "from a"; _G.also = "a"; ngx.say(leaked, " ", also)]])
    local b = script("b", [[ngx.say(tostring(leaked), " ", tostring(also), " ", tostring(_G.leaked))]])
    assert.equal("from a a\n", a:run {}.body)
    assert.equal("nil nil nil\n", b:run {}.body)
    local again = script("a2", [[ngx.say(tostring(leaked)); leaked = 1]])
    assert.equal("nil\n", again:run {}.body)
    assert.equal("nil\n", again:run {}.body)
  end)

  it("refuses to shadow a built-in global, with a clear error", function()
    local res = script("shadow", [[print = function() end]]):run {}
    assert.equal(500, res.status)
    assert.matches("cannot assign to the built-in global 'print'", res.error, 1, true)
    assert.equal("ok\n", script("local", [[local print = function() end ngx.say("ok")]]):run {}.body)
  end)

  it("the standard library, string metatable and API tables are frozen", function()
    local attempts = {
      [[string.upper = function() return "pwned" end]],
      [[rawset(string, "upper", nil)]],
      [[getmetatable("").__index = { upper = function() return "pwned" end }]],
      [[table.insert = nil]],
      [[ngx.say = nil]],
      [[ngx.req.get_method = nil]],
      [[ngx.foo = 1]],
      [[require("cjson").encode = nil]],
      [[require("bit").band = nil]],
      [[sluicegate.crypto.sha256 = nil]],
      [[math.pi = 3]],
    }
    for i, code in ipairs(attempts) do
      local res = script("freeze" .. i, code):run {}
      assert.equal(500, res.status, code)
    end
    assert.equal("ABC\n", script("after", [[ngx.say(string.upper("abc"))]]):run {}.body)
  end)

  it("has no code loading, environment or file and process access", function()
    local res = script("env", [[
      local names = { "loadstring", "load", "getfenv", "setfenv", "dofile", "loadfile", "io", "module" }
      local present = {}
      for _, n in ipairs(names) do if _G[n] ~= nil then table.insert(present, n) end end
      for _, n in ipairs({ "execute", "getenv", "remove", "rename", "exit", "tmpname" }) do
        if os[n] ~= nil then table.insert(present, "os." .. n) end
      end
      if debug.getinfo or debug.sethook then table.insert(present, "debug") end
      ngx.say(#present == 0 and "none" or table.concat(present, ","))
    ]]):run {}
    assert.equal("none\n", res.body)
  end)

  it("require resolves built-in and configured modules only and never reads files", function()
    local res = script("req", [[
      local cjson = require "cjson"
      local safe = require "cjson.safe"
      local ok, err = pcall(require, "socket")
      local ok2 = pcall(require, "./x")
      ngx.say(type(cjson.encode), " ", type(safe.decode), " ", ok, " ", ok2, " ", string.find(tostring(err), "not a built-in module", 1, true) ~= nil)
    ]]):run {}
    assert.equal("function function false false true\n", res.body)
  end)

  it("collectgarbage only counts", function()
    local res = script("gc", [[ngx.say(type(collectgarbage("count")), " ", pcall(collectgarbage, "collect"))]]):run {}
    assert.matches("^number false", res.body)
  end)

  it("ngx.ctx is per request", function()
    local s = script("ctx", [[
      local before = ngx.ctx.n
      ngx.ctx.n = (ngx.ctx.n or 0) + 1
      ngx.ctx = { replaced = true, n = ngx.ctx.n }
      ngx.say(tostring(before), " ", ngx.ctx.n, " ", ngx.ctx.replaced)
    ]])
    assert.equal("nil 1 true\n", s:run {}.body)
    assert.equal("nil 1 true\n", s:run {}.body)
  end)
end)

describe("timers", function()
  it("ngx.timer.at runs later, ngx.timer.every repeats", function()
    t.configure { shared_dicts = { timers = 65536 } }
    local s = script("timer", [[
      local d = ngx.shared.timers
      d:set("at", 0) d:set("every", 0)
      assert(ngx.timer.at(0.01, function(premature, by) d:incr("at", by) end, 5))
      local ok, err = ngx.timer.every(0.01, function() d:incr("every", 1) end)
      ngx.sleep(0.1)
      ngx.say(d:get("at"), " ", d:get("every") >= 3, " ", ok, " ", tostring(err), " ", ngx.timer.pending_count() >= 1)
    ]])
    assert.equal("5 true true nil true\n", s:run {}.body)
  end)

  it("rejects bad delays", function()
    local res = script("badtimer", [[ngx.timer.every(0, function() end)]]):run {}
    assert.equal(500, res.status)
  end)
end)

describe("ngx.sleep", function()
  it("waits without counting against the CPU budget", function()
    t.configure { cpu_budget_ms = 20 }
    local res = script("sleepy", [[ngx.sleep(0.05) ngx.sleep(0) ngx.say("done")]], "access"):run {}
    assert.equal("done\n", res.body)
  end)
end)
