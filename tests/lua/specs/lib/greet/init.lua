-- `require "greet"` finds greet/init.lua; it requires a sibling module.
local counter = require "counter"
return {
  hello = function(who) return "hello " .. who .. " #" .. counter.next() end,
}
