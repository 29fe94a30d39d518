-- The edge router of "Edge routing with Envoy and Lua" as a user module, with the two fixes
-- any user makes to the post's listing (the missing comma in the caller's table and the
-- module's `return M`). It reads the user's region from the token in `authorization` and
-- names the upstream in the `region` header, which the route's `cluster_header` follows:
-- `<api>-<region>` when the region is this edge's, else `<prefix>-<region>`, the edge
-- router that owns it.
--
-- jwt.decode(token) only decodes: it does not verify the token (the post leaves that out
-- "for simplicity"); pass a key to verify it (see docs/lua-api.md#the-jwt-module).
local jwt = require "jwt"
local M = {}
function M.route(request_handle, config)
local metadata = request_handle:metadata()
local token = request_handle:headers():get("authorization") local decoded = jwt.decode(token)
if decoded.region == config.region then
request_handle:headers():replace(
"region",
metadata:get("api") .. "-" .. decoded.region
)
else
request_handle:headers():replace(
"region",
config.prefix .. "-" .. decoded.region
)
end
end
return M
