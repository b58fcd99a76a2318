-- Unit tests of berth.picker: `luajit services/lb-agent/lua/test/picker_test.lua` (Debian's luajit2,
-- OpenResty's LuaJIT as in nginx; services/lb-agent/src/lua.test.ts runs it). Prints one line per
-- test; exits 1 when one fails.
local here = arg[0]:match("^(.*)/test/[^/]*$") or "."
package.path = here .. "/?.lua;" .. package.path
local picker = require("berth.picker")

local tests, failed = {}, 0
local function test(name, fn) tests[#tests + 1] = { name = name, fn = fn } end
local function eq(actual, expected, what)
  if actual ~= expected then
    error(string.format("%s: expected %s, got %s", what or "value", tostring(expected), tostring(actual)), 2)
  end
end

local function peer(address, port, stale)
  return { address = address, ports = { http = port or 8080 }, cell = stale and "cell-b" or "cell-a",
           stale = stale or false }
end

local function doc(versions, weights, stickiness)
  return { app = "shop", revision = 1, weights = weights, stickiness = stickiness, versions = versions }
end

-- Counts the versions chosen over n requests (no sticky key).
local function count_versions(p, n)
  local counts = {}
  for _ = 1, n do
    local v = p:choose_version(nil, nil)
    counts[v] = (counts[v] or 0) + 1
  end
  return counts
end

test("hash is FNV-1a with murmur3's finaliser, spreading short keys", function()
  eq(picker.hash(""), 0xab3e7c0b, "hash('')")
  eq(picker.hash("a"), 0x1a80b1b3, "hash('a')")
  eq(picker.hash("foobar"), 0x0c0da6dc, "hash('foobar')")
  -- Keys differing in their last character spread over the whole range, not one narrow band.
  local low = 0
  for k = 0, 99 do
    if picker.hash("u" .. k) < 2147483648 then low = low + 1 end
  end
  assert(low > 35 and low < 65, low .. " of 100 short keys in the lower half")
end)

test("weights split requests exactly over a cycle", function()
  local p = picker.new(doc({ v1 = { peer("10.0.0.1") }, v2 = { peer("10.0.0.2") } }, { v1 = 90, v2 = 10 }))
  local c = count_versions(p, 1000)
  eq(c.v1, 900, "v1")
  eq(c.v2, 100, "v2")
end)

test("a version with no peer is skipped and the rest renormalised", function()
  local p = picker.new(doc({ v1 = { peer("10.0.0.1") }, v2 = { peer("10.0.0.2") }, v3 = {} },
    { v1 = 30, v2 = 10, v3 = 60 }))
  local c = count_versions(p, 400)
  eq(c.v1, 300, "v1")
  eq(c.v2, 100, "v2")
  eq(c.v3, nil, "v3")
  eq(p.versions[1].upto, 0.75, "v1's cumulative share")
end)

test("all weight on a version with no peer falls back to replicas", function()
  local p = picker.new(doc({ v1 = { peer("10.0.0.1") }, v2 = {} }, { v1 = 0, v2 = 100 }))
  eq(count_versions(p, 10).v1, 10, "v1")
end)

test("null weights: each version weighs its number of peers", function()
  local p = picker.new(doc({ v1 = { peer("10.0.0.1"), peer("10.0.0.2"), peer("10.0.0.3") },
                             v2 = { peer("10.0.0.4") } }, nil))
  local c = count_versions(p, 400)
  eq(c.v1, 300, "v1")
  eq(c.v2, 100, "v2")
end)

test("no peer at all: no version", function()
  local p = picker.new(doc({ v1 = {} }, { v1 = 100 }))
  eq(p:has_peers(), false, "has_peers")
  eq(p:choose_version(nil, nil), nil, "version")
  eq(p:choose_version("v1", "key"), nil, "forced version")
end)

test("a forced version wins when it has peers, even at weight 0", function()
  local p = picker.new(doc({ v1 = { peer("10.0.0.1") }, v2 = { peer("10.0.0.2") }, v3 = {} },
    { v1 = 100, v2 = 0, v3 = 0 }))
  eq(p:choose_version("v2", nil), "v2", "forced v2")
  eq(p:choose_version("v3", nil), "v1", "v3 has no peer")
  eq(p:choose_version("v9", nil), "v1", "unknown version")
end)

test("peers without the upstream's port are left out", function()
  local p = picker.new(doc({ v1 = { peer("10.0.0.1") },
                             v2 = { { address = "10.0.0.2", ports = { grpc = 9090 }, stale = false } } },
    { v1 = 50, v2 = 50 }), { port = "http" })
  eq(count_versions(p, 10).v1, 10, "v1")
end)

test("versions sort by number: v10 is newer than v9", function()
  local p = picker.new(doc({ v10 = { peer("10.0.0.1") }, v9 = { peer("10.0.0.2") } }, nil))
  eq(p.versions[1].name, "v9", "oldest")
  eq(p.versions[2].name, "v10", "newest")
end)

test("smooth weighted round-robin: each peer once per cycle, interleaved", function()
  local p = picker.new(doc({ v1 = { peer("10.0.0.3"), peer("10.0.0.1"), peer("10.0.0.2") } }, nil))
  for cycle = 1, 3 do
    local seen = {}
    for _ = 1, 3 do
      local pk = p:pick("v1")
      eq(seen[pk.address], nil, "cycle " .. cycle .. " repeats " .. pk.address)
      seen[pk.address] = true
    end
  end
  -- Version level: 3:1 is interleaved (nginx's SWRR), not three v1 in a row then v2 at random.
  local q = picker.new(doc({ v1 = { peer("10.0.0.1") }, v2 = { peer("10.0.0.2") } }, { v1 = 3, v2 = 1 }))
  local seq = {}
  for i = 1, 8 do seq[i] = q:choose_version(nil, nil) end
  eq(table.concat(seq, ","), "v1,v1,v2,v1,v1,v1,v2,v1", "sequence")
end)

test("sticky keys keep their version and only move to the newest as its weight rises", function()
  local versions = { v1 = { peer("10.0.0.1") }, v2 = { peer("10.0.0.2") } }
  local before, moved = {}, 0
  for _, w in ipairs({ 10, 20, 50 }) do
    local p = picker.new(doc(versions, { v1 = 100 - w, v2 = w }, { cookie = "berth_route" }))
    local on_v2 = 0
    for k = 1, 10000 do
      local key = "user-" .. k
      local v = p:choose_version(nil, key)
      eq(p:choose_version(nil, key), v, "same key, same version")
      if before[k] == "v2" then eq(v, "v2", "key " .. key .. " at weight " .. w) end
      if before[k] == "v1" and v == "v2" then moved = moved + 1 end
      if v == "v2" then on_v2 = on_v2 + 1 end
      before[k] = v
    end
    -- The hash spreads keys: v2's share is its weight, within 2 points.
    assert(math.abs(on_v2 / 100 - w) < 2, "v2 holds " .. on_v2 .. " of 10000 keys at weight " .. w)
  end
  assert(moved > 3000, "keys moved onto v2: " .. moved)
end)

test("stale peers are used only when the version has no fresh one", function()
  local p = picker.new(doc({ v1 = { peer("10.0.0.1", 8080, true), peer("10.0.0.2") },
                             v2 = { peer("10.0.0.3", 8080, true) } }, nil))
  for _ = 1, 5 do eq(p:pick("v1").address, "10.0.0.2", "v1's fresh peer") end
  eq(p:pick("v2").address, "10.0.0.3", "v2's only (stale) peer")
end)

test("passive health: 3 failures in 10 s skip a peer for 10 s; all down fails open", function()
  local t = 1000
  local p = picker.new(doc({ v1 = { peer("10.0.0.1"), peer("10.0.0.2") } }, nil), { now = function() return t end })
  local bad = p.by_name.v1.fresh[1]
  p:fail(bad); p:fail(bad)
  eq(p:is_down(bad), false, "2 failures")
  t = t + 11 -- the window passed: counting starts again
  p:fail(bad); p:fail(bad)
  eq(p:is_down(bad), false, "2 failures in a new window")
  p:fail(bad)
  eq(p:is_down(bad), true, "3 failures within 10 s")
  for _ = 1, 6 do eq(p:pick("v1").address, "10.0.0.2", "skips the down peer") end
  -- Both down: fail open, round-robin over both.
  local good = p.by_name.v1.fresh[2]
  for _ = 1, 3 do p:fail(good) end
  local seen = {}
  for _ = 1, 4 do seen[p:pick("v1").address] = true end
  assert(seen["10.0.0.1"] and seen["10.0.0.2"], "fail open uses every peer")
  t = t + 10
  eq(p:is_down(bad), false, "back after fail_timeout")
  -- A new picker for the same app keeps the failure counts.
  for _ = 1, 3 do p:fail(bad) end
  local q = picker.new(doc({ v1 = { peer("10.0.0.1"), peer("10.0.0.2") } }, nil),
    { now = function() return t end, health = p.health })
  eq(q:is_down(q.by_name.v1.fresh[1]), true, "health carried over")
end)

test("pick_other: another peer of the version, then another version", function()
  local p = picker.new(doc({ v1 = { peer("10.0.0.1"), peer("10.0.0.2", 8080, true) },
                             v2 = { peer("10.0.0.3") }, v3 = { peer("10.0.0.4") } }, { v1 = 50, v2 = 10, v3 = 40 }))
  local first = p:pick("v1")
  eq(first.address, "10.0.0.1", "first pick")
  local tried = { [first.id] = true }
  local second = p:pick_other("v1", tried)
  eq(second.address, "10.0.0.2", "v1's stale peer")
  tried[second.id] = true
  local third = p:pick_other("v1", tried)
  eq(third.version, "v3", "the heavier other version")
  tried[third.id] = true
  eq(p:pick_other("v1", tried).version, "v2", "then v2")
  tried[p:pick_other("v1", tried).id] = true
  eq(p:pick_other("v1", tried), nil, "every peer tried")
end)

test("pick_other prefers a healthy peer of another version to a down one of its own", function()
  local p = picker.new(doc({ v1 = { peer("10.0.0.1"), peer("10.0.0.2") }, v2 = { peer("10.0.0.3") } }, nil))
  local a, b = p.by_name.v1.fresh[1], p.by_name.v1.fresh[2]
  for _ = 1, 3 do p:fail(b) end
  eq(p:pick_other("v1", { [a.id] = true }).address, "10.0.0.3", "healthy v2 peer")
  for _ = 1, 3 do p:fail(p.by_name.v2.fresh[1]) end
  eq(p:pick_other("v1", { [a.id] = true }).address, "10.0.0.2", "all down: untried v1 peer")
end)

for _, t in ipairs(tests) do
  local ok, err = pcall(t.fn)
  if ok then
    print("ok   " .. t.name)
  else
    failed = failed + 1
    print("FAIL " .. t.name .. "\n     " .. tostring(err))
  end
end
print(string.format("%d tests, %d failed", #tests, failed))
os.exit(failed == 0 and 0 or 1)
