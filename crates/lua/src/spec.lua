-- The busted subset of `sluicegate test`: describe/it/pending, before_each/after_each,
-- setup/teardown, and luassert-style assertions (assert.equal/same/truthy/falsy/error and
-- the `is`/`are`/`has`/`not` chains). Loaded into the spec VM before it is sandboxed;
-- returns the runner, which collects the tests of one spec file and runs them.

local root, current

local function new_node(name, parent)
  return { name = name, parent = parent, children = {}, before = {}, after = {}, setup = {}, teardown = {} }
end

function describe(name, fn)
  local node = new_node(tostring(name), current)
  table.insert(current.children, { kind = "describe", node = node })
  local outer = current
  current = node
  local ok, err = pcall(fn)
  current = outer
  if not ok then
    table.insert(node.children, { kind = "broken", name = "(describe block)", err = err })
  end
end
context = describe

function it(name, fn)
  table.insert(current.children, { kind = fn and "it" or "pending", name = tostring(name), fn = fn })
end

function pending(name)
  table.insert(current.children, { kind = "pending", name = tostring(name) })
end

function before_each(fn) table.insert(current.before, fn) end
function after_each(fn) table.insert(current.after, fn) end
function setup(fn) table.insert(current.setup, fn) end
function teardown(fn) table.insert(current.teardown, fn) end
lazy_setup, lazy_teardown, strict_setup, strict_teardown = setup, teardown, setup, teardown

-- Values in failure messages, like luassert: "(number) 1", "(string) 'x'", tables expanded.
local function show(v, depth)
  depth = depth or 0
  local t = type(v)
  if t == "string" then return string.format("(string) '%s'", v) end
  if t ~= "table" then return string.format("(%s) %s", t, tostring(v)) end
  if depth > 3 then return "(table) {...}" end
  local keys = {}
  for k in pairs(v) do table.insert(keys, k) end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local parts = {}
  for _, k in ipairs(keys) do
    table.insert(parts, string.format("[%s] = %s", type(k) == "string" and string.format("'%s'", k) or tostring(k), show(v[k], depth + 1)))
  end
  return "(table) { " .. table.concat(parts, ", ") .. " }"
end

local function same(a, b, seen)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  seen = seen or {}
  if seen[a] == b then return true end
  seen[a] = b
  for k, v in pairs(a) do
    if not same(v, b[k], seen) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

-- Error text without "file:line: " (and, for errors raised by Rust functions, without
-- mlua's "runtime error: " prefix and traceback).
local function strip_location(msg)
  if type(msg) == "userdata" then
    msg = tostring(msg)
    msg = string.gsub(msg, "^runtime error: ", "", 1)
    msg = string.gsub(msg, "\nstack traceback:.*$", "", 1)
  end
  if type(msg) ~= "string" then return msg end
  return (string.gsub(msg, "^[^\n]-:%d+: ", "", 1))
end

-- Each check returns ok, message-when-positive-fails, message-when-negated-fails.
local checks = {}
function checks.equal(expected, actual)
  return expected == actual,
    "Expected objects to be equal.\nPassed in:\n" .. show(actual) .. "\nExpected:\n" .. show(expected),
    "Expected objects to not be equal.\nPassed in:\n" .. show(actual) .. "\nDid not expect:\n" .. show(expected)
end
checks.equals = checks.equal
function checks.same(expected, actual)
  return same(expected, actual),
    "Expected objects to be the same.\nPassed in:\n" .. show(actual) .. "\nExpected:\n" .. show(expected),
    "Expected objects to not be the same.\nPassed in:\n" .. show(actual) .. "\nDid not expect:\n" .. show(expected)
end
function checks.truthy(v)
  return v ~= nil and v ~= false, "Expected to be truthy, but value was:\n" .. show(v), "Expected to not be truthy, but value was:\n" .. show(v)
end
function checks.falsy(v)
  return v == nil or v == false, "Expected to be falsy, but value was:\n" .. show(v), "Expected to not be falsy, but value was:\n" .. show(v)
end
checks["true"] = function(v) return v == true, "Expected true, got:\n" .. show(v), "Expected not true" end
checks["false"] = function(v) return v == false, "Expected false, got:\n" .. show(v), "Expected not false" end
checks["nil"] = function(v) return v == nil, "Expected nil, got:\n" .. show(v), "Expected a non-nil value" end
function checks.error(fn, expected)
  if type(fn) ~= "function" then
    return false, "assert.error needs a function, got " .. type(fn), "assert.error needs a function"
  end
  local ok, err = pcall(fn)
  if ok then
    return false, "Expected an error, but the function returned normally", "Expected no error"
  end
  if expected ~= nil and strip_location(err) ~= expected and err ~= expected then
    return false, "Expected error:\n" .. show(expected) .. "\nGot:\n" .. show(strip_location(err)),
      "Expected no error, got:\n" .. show(err)
  end
  return true, "", "Expected no error, got:\n" .. show(err)
end
checks.errors = checks.error
function checks.matches(pattern, s, init, plain)
  local ok = type(s) == "string" and string.find(s, pattern, init, plain) ~= nil
  return ok, "Expected " .. show(s) .. " to match " .. show(pattern), "Expected " .. show(s) .. " to not match " .. show(pattern)
end
checks.match = checks.matches
function checks.near(expected, actual, tolerance)
  local ok = type(actual) == "number" and math.abs(expected - actual) <= tolerance
  return ok, "Expected " .. show(actual) .. " to be within " .. tostring(tolerance) .. " of " .. show(expected), "Expected values to differ"
end
for _, ty in ipairs({ "table", "string", "number", "function", "boolean", "userdata", "thread" }) do
  checks[ty] = function(v) return type(v) == ty, "Expected a " .. ty .. ", got:\n" .. show(v), "Expected not a " .. ty end
end

local modifiers = { is = true, are = true, has = true, was = true, does = true, ["have"] = true, to = true, be = true }
local negators = { ["not"] = true, no = true }

local function chain(negated)
  return setmetatable({}, {
    __index = function(_, key)
      local neg = negated
      local words = {}
      for w in string.gmatch(key, "[^_]+") do table.insert(words, w) end
      local i = 1
      while i <= #words do
        if negators[words[i]] then neg = not neg elseif not modifiers[words[i]] then break end
        i = i + 1
      end
      local name = table.concat(words, "_", i)
      if name == "" then return chain(neg) end
      local check = checks[name]
      if not check then error("unknown assertion: assert." .. key, 2) end
      return function(...)
        local ok, msg, negmsg = check(...)
        if neg then ok = not ok end
        if not ok then
          local extra = select("#", ...) >= 3 and (name == "equal" or name == "equals" or name == "same") and select(3, ...) or nil
          error((neg and negmsg or msg) .. (type(extra) == "string" and ("\n" .. extra) or ""), 2)
        end
      end
    end,
    __call = function(_, v, msg, ...)
      if not v then error(msg or "assertion failed!", 2) end
      return v, msg, ...
    end,
  })
end
assert = chain(false)

local function befores(node, list)
  if node.parent then befores(node.parent, list) end
  for _, f in ipairs(node.before) do table.insert(list, f) end
  return list
end

local function afters(node, list)
  for _, f in ipairs(node.after) do table.insert(list, f) end
  if node.parent then afters(node.parent, list) end
  return list
end

local function run_node(node, prefix, results)
  for _, f in ipairs(node.setup) do
    local ok, err = pcall(f)
    if not ok then table.insert(results, { name = prefix .. "(setup)", status = "fail", message = tostring(err) }) return end
  end
  for _, child in ipairs(node.children) do
    if child.kind == "describe" then
      run_node(child.node, prefix .. child.node.name .. " ", results)
    elseif child.kind == "pending" then
      table.insert(results, { name = prefix .. child.name, status = "pending" })
    elseif child.kind == "broken" then
      table.insert(results, { name = prefix .. child.name, status = "fail", message = tostring(child.err) })
    else
      local ok, err = true, nil
      for _, f in ipairs(befores(node, {})) do
        ok, err = pcall(f)
        if not ok then break end
      end
      if ok then ok, err = pcall(child.fn) end
      for _, f in ipairs(afters(node, {})) do
        local aok, aerr = pcall(f)
        if ok and not aok then ok, err = aok, aerr end
      end
      table.insert(results, { name = prefix .. child.name, status = ok and "pass" or "fail", message = (not ok) and tostring(err) or nil })
    end
  end
  for _, f in ipairs(node.teardown) do pcall(f) end
end

local runner = {}

-- Runs one spec file (its compiled chunk); returns the results.
function runner.run(chunk)
  root = new_node("", nil)
  current = root
  local results = {}
  local ok, err = pcall(chunk)
  if not ok then
    table.insert(results, { name = "(loading the spec file)", status = "fail", message = tostring(err) })
  end
  current = root
  run_node(root, "", results)
  runner.last = results
  return results
end

return runner
