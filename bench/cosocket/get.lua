-- One Redis GET per request over a pooled cosocket, answered as the body: the same code
-- runs as nginx-lua's content_by_lua_file and as Sluicegate's content script.
local sock = ngx.socket.tcp()
sock:settimeout(1000)
local ok, err = sock:connect("127.0.0.1", @REDIS_PORT@)
if not ok then
  ngx.status = 502
  ngx.say("connect: ", err)
  return
end
sock:send("*2\r\n$3\r\nGET\r\n$5\r\nbench\r\n")
local line = sock:receive()
local n = tonumber(string.sub(line, 2))
local value = sock:receive(n + 2)
sock:setkeepalive(60000, 64)
ngx.print(string.sub(value, 1, n))
