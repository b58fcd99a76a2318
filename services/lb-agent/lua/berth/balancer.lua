-- Routes requests with the documents the agent pushed (docs/traffic.md, "The lb-agent and its
-- nginx"). Two calls per request, from the rendered config:
--
--   location:  access_by_lua_block { require("berth.balancer").route("shop", "http") }
--   upstream:  balancer_by_lua_block { require("berth.balancer").balance("shop", "http") }
--
-- route() picks the version (forced, sticky or weighted) and may answer 503 itself; balance()
-- picks that version's peer, once per attempt. The choice lives in ngx.ctx.berth
-- ({ app, port, version, peer, tried }), which stats.log() reads.
local ngx_balancer = require("ngx.balancer")
local cjson = require("cjson.safe")
local picker = require("berth.picker")

local M = {}

-- This worker's pickers, per "app|port": { gen = n, picker = p or false }. A request compares the
-- app's generation in the dict; only when it moved is that one app's document decoded again.
local cache = {}

local function get_picker(app, port)
  local routes = ngx.shared.berth_routes
  local gen = routes:get("gen:" .. app)
  local key = app .. "|" .. port
  local entry = cache[key]
  if entry and entry.gen == gen then return entry.picker end

  local p = false
  local body = gen and routes:get("doc:" .. app)
  if body then
    local doc, err = cjson.decode(body)
    if type(doc) == "table" then
      -- The new picker keeps the failure counts of the old one: a document change (weights, a
      -- new peer) does not make a dead peer healthy.
      local health = entry and entry.picker and entry.picker.health
      p = picker.new(doc, { port = port, now = ngx.now, health = health })
    else
      ngx.log(ngx.ERR, "berth: routing document of ", app, " does not decode: ", err)
    end
  end
  cache[key] = { gen = gen, picker = p }
  return p
end

-- A request header's value through nginx's $http_* variable (no table of every header built).
local function header(name)
  return ngx.var["http_" .. (name:lower():gsub("-", "_"))]
end

local function unavailable()
  ngx.status = 503
  ngx.header["Retry-After"] = "1"
  ngx.header["Content-Type"] = "text/plain"
  ngx.say("no instance of this app is available; retry in a moment")
  return ngx.exit(503)
end

-- Access phase: choose the version, or answer 503 when the app has no peer at all.
function M.route(app, port)
  local p = get_picker(app, port)
  ngx.ctx.berth = { app = app, port = port }
  if not p or not p:has_peers() then return unavailable() end

  -- A forced version (header, then cookie) counts only when it has peers.
  local forced = header("X-Berth-Version")
  if not (forced and p.by_name[forced]) then forced = ngx.var.cookie_berth_version end
  local key
  if p.sticky and p.sticky.cookie then
    key = ngx.var["cookie_" .. p.sticky.cookie]
  elseif p.sticky and p.sticky.header then
    key = header(p.sticky.header)
  end

  local version = p:choose_version(forced, key)
  ngx.ctx.berth.version = version
  ngx.header["X-Berth-Version"] = version
end

-- Balancer phase, once per attempt: a peer of the chosen version; on a retry, record the failure
-- and take a peer not tried yet (the same version's first, see picker.pick_other).
function M.balance(app, port)
  local p = get_picker(app, port)
  if not p or not p:has_peers() then
    ngx.log(ngx.ERR, "berth: no peer for ", app, "/", port)
    return ngx.exit(503)
  end
  local ctx = ngx.ctx.berth
  if not ctx or not ctx.version then -- a location without route(): plain weights
    ctx = { app = app, port = port, version = p:choose_version(nil, nil) }
    ngx.ctx.berth = ctx
  end

  local peer
  if not ctx.tried then
    ctx.tried = {}
    -- Up to 2 more attempts (proxy_next_upstream_tries 3 in the rendered location).
    ngx_balancer.set_more_tries(2)
    peer = p:pick(ctx.version) or p:pick_other(ctx.version, ctx.tried)
  else
    local state, code = ngx_balancer.get_last_failure()
    if state and ctx.peer then
      p:fail(ctx.peer)
      ngx.log(ngx.WARN, "berth: ", app, " peer ", ctx.peer.address, ":", ctx.peer.ports[port],
        " failed (", state, " ", tostring(code), "), retrying")
    end
    peer = p:pick_other(ctx.version, ctx.tried)
  end
  if not peer then
    ngx.log(ngx.ERR, "berth: every peer of ", app, "/", port, " was tried")
    return ngx.exit(502)
  end

  ctx.tried[peer.id] = true
  ctx.peer = peer
  local ok, err = ngx_balancer.set_current_peer(peer.address, tonumber(peer.ports[port]))
  if not ok then
    ngx.log(ngx.ERR, "berth: cannot set peer ", peer.address, ": ", err)
    return ngx.exit(500)
  end
end

return M
