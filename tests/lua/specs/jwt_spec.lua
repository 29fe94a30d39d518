-- sluicegate.jwt: verify() with each kind of key, and claims() without a jwt plugin.
local t = require "sluicegate.test"
local cjson = require "cjson"
local crypto = sluicegate.crypto

local SECRET = "0123456789abcdef0123456789abcdef"

local function hs256(claims, header)
  local h = crypto.encode_base64url(cjson.encode(header or { alg = "HS256", typ = "JWT" }))
  local p = crypto.encode_base64url(cjson.encode(claims))
  local input = h .. "." .. p
  return input .. "." .. crypto.encode_base64url(crypto.hmac_sha256(SECRET, input))
end

describe("sluicegate.jwt.verify", function()
  it("returns the claims of a valid token", function()
    local claims, err = sluicegate.jwt.verify(hs256({ sub = "alice", exp = ngx.time() + 60 }), { secret = SECRET })
    assert.is_nil(err)
    assert.equal("alice", claims.sub)
  end)

  it("returns nil and the reason for a bad token", function()
    local claims, err = sluicegate.jwt.verify(hs256({ sub = "a", exp = ngx.time() - 3600 }), { secret = SECRET })
    assert.is_nil(claims)
    assert.equal("the token has expired", err)
    claims, err = sluicegate.jwt.verify(hs256({ exp = ngx.time() + 60 }), { secret = SECRET .. "x" })
    assert.is_nil(claims)
    assert.equal("the token's signature is invalid", err)
    local none = hs256({ exp = ngx.time() + 60 }, { alg = "none" })
    claims, err = sluicegate.jwt.verify(none, { secret = SECRET })
    assert.is_nil(claims)
    assert.equal("unsigned tokens (alg none) are not accepted", err)
    claims, err = sluicegate.jwt.verify(nil, { secret = SECRET })
    assert.is_nil(claims)
    assert.equal("no token (expected a string)", err)
  end)

  it("checks issuer, audience and required claims", function()
    local token = hs256({ iss = "idp", aud = { "web", "api" }, exp = ngx.time() + 60 })
    assert.is_table((sluicegate.jwt.verify(token, { secret = SECRET, issuer = "idp", audience = "api" })))
    local _, err = sluicegate.jwt.verify(token, { secret = SECRET, audience = { "admin" } })
    assert.equal("the token's audience is not accepted", err)
    _, err = sluicegate.jwt.verify(token, { secret = SECRET, required_claims = { "exp", "sub" } })
    assert.equal("the token lacks the required claim `sub`", err)
  end)

  it("takes a public JWK, and never uses it for another key type's algorithm", function()
    local token = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc."
      .. "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
    local jwk = { kty = "OKP", crv = "Ed25519", x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" }
    -- The payload is not JSON ("Example of Ed25519 signing"): the signature verifies, the
    -- payload does not parse.
    local _, err = sluicegate.jwt.verify(token, { jwk = jwk, required_claims = {} })
    assert.equal("the token is malformed: the payload is not a JSON object", err)
    -- An HS256 token against an Ed25519 key: the algorithm does not fit the key.
    _, err = sluicegate.jwt.verify(hs256({ exp = ngx.time() + 60 }), { jwk = jwk })
    assert.equal("the token's algorithm is not accepted", err)
  end)

  it("raises on bad options", function()
    assert.has_error(function() sluicegate.jwt.verify("a.b.c", {}) end)
    assert.has_error(function() sluicegate.jwt.verify("a.b.c", { secret = "short" }) end)
    assert.has_error(function() sluicegate.jwt.verify("a.b.c", { pem = "nope" }) end)
    assert.has_error(function() sluicegate.jwt.verify("a.b.c", { secret = SECRET, alg = "RS256" }) end)
  end)
end)

describe("sluicegate.jwt.claims", function()
  it("is nil without a jwt plugin", function()
    local res = t.script { phase = "content", name = "claims", code = [[
      ngx.say(tostring(sluicegate.jwt.claims()))
    ]] }:run {}
    assert.equal("nil\n", res.body)
  end)

  it("returns the claims a spec gives the request", function()
    local script = t.script { phase = "access", name = "plans", code = [[
      local c = sluicegate.jwt.claims()
      if c.plan ~= "pro" then return ngx.exit(403) end
      ngx.req.set_header("X-Org", c.org.id)
    ]] }
    assert.equal(403, script:run { jwt_claims = { plan = "free" } }.status)
    local res = script:run { jwt_claims = { plan = "pro", org = { id = "acme" } } }
    assert.is_true(res.continued)
    assert.equal("acme", res.request.headers["x-org"])
  end)
end)
