-- ngx.re.*: regexes with OpenResty's calling conventions.
local t = require "sluicegate.test"

local function run(code)
  return t.script { phase = "content", name = "re", code = code }:run {}
end

describe("ngx.re", function()
  it("match returns captures, named captures and false for unmatched groups", function()
    local res = run([=[
      local m = ngx.re.match("hello 1234 world", [[(?<word>[a-z]+) (\d+)( x)?]])
      ngx.say(m[0], "|", m[1], "|", m[2], "|", tostring(m[3]), "|", m.word)
      ngx.say(tostring(ngx.re.match("abc", "\\d")))
    ]=])
    assert.equal("hello 1234|hello|1234|false|hello\nnil\n", res.body)
  end)

  it("honours i, m, s, x options and ctx.pos", function()
    local res = run([[
      local ctx = { pos = 4 }
      local m = ngx.re.match("AB-ab-Ab", "ab", "i", ctx)
      local m2 = ngx.re.match("a\nb", "^b$", "m")
      local m3 = ngx.re.match("a\nb", "a.b", "s")
      local m4 = ngx.re.match("abc", " a b c ", "x")
      ngx.say(m[0], " ", ctx.pos, " ", m2[0], " ", m3[0] == "a\nb", " ", m4[0])
    ]])
    assert.equal("ab 6 b true abc\n", res.body)
  end)

  it("find returns 1-based inclusive positions", function()
    local res = run([[
      local from, to = ngx.re.find("hello world", "o w")
      local f2, t2 = ngx.re.find("key=value", "(\\w+)=(\\w+)", "", nil, 2)
      ngx.say(from, " ", to, " ", f2, " ", t2, " ", tostring(ngx.re.find("x", "y")))
    ]])
    assert.equal("5 7 5 9 nil\n", res.body)
  end)

  it("gsub and sub replace with templates or functions", function()
    local res = run([[
      local s, n = ngx.re.gsub("a1b22c333", "\\d+", "<$0>")
      local s2, n2 = ngx.re.sub("john smith", "(\\w+) (\\w+)", "$2, ${1}")
      local s3 = ngx.re.gsub("abc", "b", function(m) return string.upper(m[0]) end)
      local s4 = ngx.re.gsub("cost: 5", "\\d", "$$$0")
      ngx.say(s, " ", n, " ", s2, " ", n2, " ", s3, " ", s4)
    ]])
    assert.equal("a<1>b<22>c<333> 3 smith, john 1 aBc cost: $5\n", res.body)
  end)

  it("gmatch iterates over every match", function()
    local res = run([[
      local out = {}
      for m in ngx.re.gmatch("a=1, b=2", "(\\w)=(\\d)") do table.insert(out, m[1] .. m[2]) end
      ngx.say(table.concat(out, ","))
    ]])
    assert.equal("a1,b2\n", res.body)
  end)

  it("bad regexes return nil and an error", function()
    local res = run([[
      local m, err = ngx.re.match("x", "(")
      local s, n, err2 = ngx.re.gsub("x", "(", "y")
      ngx.say(tostring(m), " ", err ~= nil, " ", tostring(s), " ", err2 ~= nil)
    ]])
    assert.equal("nil true nil true\n", res.body)
  end)

  it("the ngx.re module splits", function()
    local res = run([[
      local re = require "ngx.re"
      local parts = re.split("a,b,,c", ",")
      local two = re.split("a,b,c", ",", nil, nil, 2)
      ngx.say(#parts, " ", table.concat(parts, "|"), " ", table.concat(two, "|"))
    ]])
    assert.equal("4 a|b||c a|b,c\n", res.body)
  end)
end)
