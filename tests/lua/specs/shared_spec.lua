-- ngx.shared.DICT: declared dictionaries with TTLs and LRU eviction.
local t = require "sluicegate.test"

local function run(code)
  return t.script { phase = "content", name = "dict", code = code }:run {}
end

describe("ngx.shared", function()
  before_each(function()
    t.configure { shared_dicts = { cache = 1048576, tiny = 4096 } }
  end)

  it("set/get with flags, add, replace, delete", function()
    local res = run([[
      local d = ngx.shared.cache
      local ok, err, forcible = d:set("k", "v", 0, 7)
      local v, flags = d:get("k")
      local a_ok, a_err = d:add("k", "other")
      local r_ok, r_err = d:replace("missing", "x")
      d:delete("k")
      ngx.say(ok, " ", err, " ", forcible, " ", v, " ", flags, " ", a_ok, " ", a_err, " ", r_ok, " ", r_err, " ", d:get("k"))
    ]])
    assert.equal("true nil false v 7 false exists false not found nil\n", res.body)
  end)

  it("stores numbers and booleans and rejects tables", function()
    local res = run([[
      local d = ngx.shared.cache
      d:set("n", 1.5) d:set("b", false)
      local ok, err = pcall(function() return d:set("t", {}) end)
      ngx.say(d:get("n") + 1, " ", tostring(d:get("b")), " ", ok, " ", string.find(tostring(err), "bad value type", 1, true) ~= nil)
    ]])
    assert.equal("2.5 false false true\n", res.body)
  end)

  it("incr counts, starts from init, and refuses strings", function()
    local res = run([[
      local d = ngx.shared.cache
      local a, e1 = d:incr("c", 1)
      local b = d:incr("c", 1, 10)
      local c = d:incr("c", 5)
      d:set("s", "x")
      local x, e2 = d:incr("s", 1)
      ngx.say(tostring(a), " ", e1, " ", b, " ", c, " ", tostring(x), " ", e2)
    ]])
    assert.equal("nil not found 11 16 nil not a number\n", res.body)
  end)

  it("expires entries after their TTL; ttl and expire", function()
    local res = run([[
      local d = ngx.shared.cache
      d:set("short", "x", 0.05)
      d:set("forever", "y")
      local ttl = d:ttl("short")
      local forever_ttl = d:ttl("forever")
      ngx.sleep(0.08)
      local v = d:get("short")
      local stale, _, is_stale = d:get_stale("forever")
      d:expire("forever", 0.01)
      ngx.sleep(0.03)
      local _, miss = d:ttl("forever")
      ngx.say(ttl > 0 and ttl <= 0.05, " ", forever_ttl, " ", tostring(v), " ", stale, " ", is_stale, " ", miss)
    ]])
    assert.equal("true 0 nil y false not found\n", res.body)
  end)

  it("evicts least recently used entries when full and reports it", function()
    local res = run([[
      local d = ngx.shared.tiny
      local evicted = false
      for i = 1, 100 do
        local ok, err, forcible = d:set("key" .. i, string.rep("v", 100))
        if forcible then evicted = true end
        assert(ok, err)
      end
      local ok, err = d:safe_set("big", string.rep("x", 3000))
      ngx.say(evicted, " ", tostring(d:get("key1")), " ", d:get("key100") ~= nil, " ", ok, " ", err, " ", d:capacity())
    ]])
    assert.equal("true nil true false no memory 4096\n", res.body)
  end)

  it("get_keys, flush_all and free_space", function()
    local res = run([[
      local d = ngx.shared.cache
      d:flush_all() d:flush_expired()
      local free = d:free_space()
      d:set("a", 1) d:set("b", 2)
      local keys = d:get_keys()
      table.sort(keys)
      d:flush_all()
      ngx.say(table.concat(keys, ","), " ", free == d:capacity(), " ", tostring(d:get("a")))
    ]])
    assert.equal("a,b true nil\n", res.body)
  end)

  it("is shared between calls and scripts, and nil for undeclared names", function()
    run([[ngx.shared.cache:set("shared", "from one")]])
    local res = t.script { phase = "access", code = [[ngx.say(ngx.shared.cache:get("shared"), " ", tostring(ngx.shared.nope))]] }:run {}
    -- before_each reconfigured the harness, but dictionaries are process-wide, like OpenResty's.
    assert.equal("from one nil\n", res.body)
  end)
end)
