-- User modules (lua.package_path) and the json and jwt modules Envoy scripts require.
local t = require "sluicegate.test"

local function script(code)
  return t.script { phase = "content", code = code, package_path = "lib" }
end

describe("user modules", function()
  it("are found with ?.lua and ?/init.lua and keep their state per worker", function()
    local s = script([[ngx.say(require("greet").hello("ada"))]])
    assert.equal("hello ada #1\n", s:run {}.body)
    assert.equal("hello ada #2\n", s:run {}.body)
  end)

  it("name the files searched when a module is missing", function()
    local res = script([[require "resty.redis"]]):run {}
    assert.equal(500, res.status)
    assert.matches("module 'resty.redis' not found", res.error, 1, true)
    assert.matches("resty/redis/init.lua", res.error, 1, true)
  end)

  it("cannot be required without a package path", function()
    local res = t.script({ phase = "content", code = [[require "counter"]] }):run {}
    assert.matches("no lua.package_path is configured", res.error, 1, true)
  end)
end)

describe("json", function()
  it("has rxi's API: null decodes to nil, bad input raises", function()
    local s = script([[
      local json = require "json"
      local v = json.decode('{"a": null, "b": [1, 2], "c": {"d": "e"}}')
      ngx.say(tostring(v.a), " ", #v.b, " ", v.c.d, " ", json.encode({ x = 1 }))
      ngx.say(tostring(pcall(json.decode, "{")), " ", tostring(pcall(json.decode, 42)))
    ]])
    assert.equal('nil 2 e {"x":1}\nfalse false\n', s:run {}.body)
  end)
end)

describe("jwt", function()
  local token = "eyJhbGciOiJub25lIn0." .. ngx.encode_base64('{"region":"eu","sub":"u1"}'):gsub("=", ""):gsub("+", "-"):gsub("/", "_") .. ".x"

  it("decodes without verifying when no key is given", function()
    local s = script(([[
      local jwt = require "jwt"
      local c = jwt.decode("Bearer TOKEN")
      ngx.say(c.region, " ", c.sub)
      local none, err = jwt.decode("not-a-token")
      ngx.say(tostring(none), " ", err)
    ]]):gsub("TOKEN", token))
    assert.equal("eu u1\nnil invalid token: expected three dot-separated parts\n", s:run {}.body)
  end)

  it("verifies with a key, and an unsigned token fails", function()
    local s = script(([[
      local jwt = require "jwt"
      local c, err = jwt.decode("TOKEN", string.rep("k", 32))
      ngx.say(tostring(c), " ", tostring(err ~= nil))
    ]]):gsub("TOKEN", token))
    assert.equal("nil true\n", s:run {}.body)
  end)
end)
