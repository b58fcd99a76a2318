-- Picks a version and a peer for one app port from a decoded routing document (docs/traffic.md,
-- "The lb-agent and its nginx"). Pure Lua (LuaJIT's `bit` only, no ngx), unit-tested with
-- luajit2, the OpenResty LuaJIT that nginx's module runs (lua/test/picker_test.lua). One picker
-- per worker, app and port; the balancer builds a new one when the app's document changes,
-- carrying the passive health state over.
--
--   local p = picker.new(doc, { port = "http", now = ngx.now })
--   local v = p:choose_version(forced, sticky_key)   -- nil: no peer at all
--   local peer = p:pick(v)                            -- smooth weighted round-robin
--   p:fail(peer); p:pick_other(v, { [peer.id] = true }) -- a retry
local bit = require("bit")

local bxor, rshift = bit.bxor, bit.rshift

local M = {}
M.__index = M

local MAX_FAILS = 3
local FAIL_TIMEOUT = 10 -- seconds
local TWO32 = 4294967296

-- a * b mod 2^32 for a, b < 2^32, exact in doubles: a's low half times b stays below 2^48, and of
-- a's high half only its product with b's low half survives the modulo.
local function mul32(a, b)
  local a_lo, a_hi = a % 65536, (a - a % 65536) / 65536
  return (a_lo * b + (a_hi * (b % 65536)) % 65536 * 65536) % TWO32
end

local function u32(x) return x < 0 and x + TWO32 or x end -- bit ops return signed 32-bit numbers

-- The sticky hash: FNV-1a (32 bits) then murmur3's finaliser. FNV-1a alone barely moves the high
-- bits for the last byte ("u1", "u2"... land close together), and the high bits pick the version.
local function hash(s)
  local h = 2166136261
  for i = 1, #s do h = mul32(u32(bxor(h, s:byte(i))), 16777619) end
  h = mul32(u32(bxor(h, rshift(h, 16))), 0x85ebca6b)
  h = mul32(u32(bxor(h, rshift(h, 13))), 0xc2b2ae35)
  return u32(bxor(h, rshift(h, 16)))
end
M.hash = hash

-- "v12" -> 12; versions sort by number, not as strings (v10 is newer than v9).
local function version_number(name)
  return tonumber(tostring(name):match("(%d+)$")) or 0
end

-- A peer's identity for health and retries: address plus its ports (tests run several peers on
-- one address).
local function peer_id(peer)
  local names = {}
  for name in pairs(peer.ports) do names[#names + 1] = name end
  table.sort(names)
  local parts = { peer.address }
  for _, name in ipairs(names) do parts[#parts + 1] = name .. "=" .. tostring(peer.ports[name]) end
  return table.concat(parts, "|")
end

local function is_table(v) return type(v) == "table" end

-- Builds a picker. opts: port (keep only peers that have this named port), now (a clock in
-- seconds, default os.time), health (the previous picker's, to keep its failure counts),
-- max_fails, fail_timeout.
function M.new(doc, opts)
  opts = opts or {}
  local self = setmetatable({
    now = opts.now or os.time,
    health = opts.health or {}, -- peer id -> { fails = n, since = t, down_until = t }
    max_fails = opts.max_fails or MAX_FAILS,
    fail_timeout = opts.fail_timeout or FAIL_TIMEOUT,
    versions = {}, -- oldest first: { name, weight, fresh = {peers}, stale = {peers}, swrr = {} }
    by_name = {},
    swrr = {}, -- version-level round-robin state: name -> current weight
  }, M)

  -- Peers per version, split fresh / stale, sorted by id so every worker sees one order.
  for name, peers in pairs(is_table(doc.versions) and doc.versions or {}) do
    local v = { name = name, fresh = {}, stale = {}, swrr = {} }
    for _, p in ipairs(is_table(peers) and peers or {}) do
      if is_table(p) and type(p.address) == "string" and is_table(p.ports)
          and (opts.port == nil or tonumber(p.ports[opts.port])) then
        local peer = { id = peer_id(p), address = p.address, ports = p.ports, cell = p.cell,
                       stale = p.stale == true, version = name }
        table.insert(peer.stale and v.stale or v.fresh, peer)
      end
    end
    local by_id = function(a, b) return a.id < b.id end
    table.sort(v.fresh, by_id)
    table.sort(v.stale, by_id)
    v.count = #v.fresh + #v.stale
    if v.count > 0 then -- a version with no peer is skipped: the others share its traffic
      self.versions[#self.versions + 1] = v
      self.by_name[name] = v
    end
  end
  table.sort(self.versions, function(a, b) return version_number(a.name) < version_number(b.name) end)

  -- Weights: null means by ready replicas (each version weighs its number of peers). Explicit
  -- weights of versions with no peer are dropped; the rest are renormalised by their total. When
  -- every version left weighs 0 (e.g. 100% on a version with no peer), fall back to replicas:
  -- answering from the versions that run beats a 503.
  local weights = is_table(doc.weights) and doc.weights or nil
  local total = 0
  for _, v in ipairs(self.versions) do
    local w = weights and tonumber(weights[v.name]) or nil
    if weights then v.weight = (w and w > 0) and w or 0 else v.weight = v.count end
    total = total + v.weight
  end
  if total == 0 then
    for _, v in ipairs(self.versions) do v.weight = v.count; total = total + v.count end
  end
  self.total = total
  -- Cumulative shares in [0, 1], oldest version first: a key's hash falls in one interval.
  local acc = 0
  for _, v in ipairs(self.versions) do
    acc = acc + v.weight
    v.upto = total > 0 and acc / total or 0
  end

  local st = is_table(doc.stickiness) and doc.stickiness or nil
  if st and type(st.cookie) == "string" then
    self.sticky = { cookie = st.cookie }
  elseif st and type(st.header) == "string" then
    self.sticky = { header = st.header }
  end
  return self
end

function M:has_peers() return #self.versions > 0 end

-- The version for a request: the forced one when it has peers; else with a sticky key, the
-- version whose cumulative share holds the key's hash (oldest first, so raising the newest's
-- weight only moves keys onto it); else smooth weighted round-robin over the versions' weights.
function M:choose_version(forced, key)
  if forced and self.by_name[forced] then return forced end
  if #self.versions == 0 then return nil end
  if key and key ~= "" then
    local x = hash(key) / TWO32
    for _, v in ipairs(self.versions) do
      if x < v.upto and v.weight > 0 then return v.name end
    end
    return self.versions[#self.versions].name
  end
  local best
  for _, v in ipairs(self.versions) do
    if v.weight > 0 then
      self.swrr[v.name] = (self.swrr[v.name] or 0) + v.weight
      if not best or self.swrr[v.name] > self.swrr[best.name] then best = v end
    end
  end
  self.swrr[best.name] = self.swrr[best.name] - self.total
  return best.name
end

-- nginx's smooth weighted round-robin (every peer weighs 1) over the peers `ok` accepts.
local function swrr(state, peers, ok)
  local best, total = nil, 0
  for _, p in ipairs(peers) do
    if ok(p) then
      total = total + 1
      state[p.id] = (state[p.id] or 0) + 1
      if not best or state[p.id] > state[best.id] then best = p end
    end
  end
  if best then state[best.id] = state[best.id] - total end
  return best
end

-- Passive health: a peer that failed max_fails times within fail_timeout is down for fail_timeout.
function M:is_down(peer)
  local h = self.health[peer.id]
  return h ~= nil and h.down_until ~= nil and self.now() < h.down_until
end

function M:fail(peer)
  local now = self.now()
  local h = self.health[peer.id]
  if not h or now - h.since >= self.fail_timeout or (h.down_until and now >= h.down_until) then
    h = { fails = 0, since = now }
    self.health[peer.id] = h
  end
  h.fails = h.fails + 1
  if h.fails >= self.max_fails then h.down_until = now + self.fail_timeout end
end

-- A peer of `version`: its fresh peers (stale ones only when it has none), skipping peers that are
-- down; when all of them are down, fail open (a peer that may have recovered beats no answer).
function M:pick(version)
  local v = self.by_name[version]
  if not v then return nil end
  local pool = #v.fresh > 0 and v.fresh or v.stale
  return swrr(v.swrr, pool, function(p) return not self:is_down(p) end)
      or swrr(v.swrr, pool, function() return true end)
end

-- For a retry: a peer not in `exclude` (a set of peer ids), healthy ones first: the same
-- version's fresh peers, then its stale ones, then the other versions' (heaviest first).
-- Returns the peer (its .version says which version) or nil when every peer was tried.
function M:pick_other(version, exclude)
  local order = {}
  if self.by_name[version] then order[1] = self.by_name[version] end
  local others = {}
  for _, v in ipairs(self.versions) do
    if v.name ~= version then others[#others + 1] = v end
  end
  table.sort(others, function(a, b) return a.weight > b.weight end)
  for _, v in ipairs(others) do order[#order + 1] = v end
  local untried = function(p) return not exclude[p.id] end
  local healthy = function(p) return not exclude[p.id] and not self:is_down(p) end
  for _, ok in ipairs({ healthy, untried }) do
    for _, v in ipairs(order) do
      local peer = swrr(v.swrr, v.fresh, ok) or swrr(v.swrr, v.stale, ok)
      if peer then return peer end
    end
  end
  return nil
end

return M
