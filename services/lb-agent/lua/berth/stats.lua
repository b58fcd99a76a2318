-- Per app and version counters in the `berth_stats` dict (since nginx started), and the boot id.
--
--   init_by_lua_block { require("berth.stats").init() }   -- http level
--   log_by_lua_block  { require("berth.stats").log() }    -- http level: every request
--
-- Keys: "{app}|{version}|{counter}", counters `requests`, `2xx`..`5xx`, `latency_sum` (seconds)
-- and `latency_count`. `snapshot()` shapes them as `GET /stats` answers.
local M = {}

local SEP = "|"
local CLASSES = { [2] = "2xx", [3] = "3xx", [4] = "4xx", [5] = "5xx" }

-- A random id for this nginx start. `add` keeps the one there: the dicts survive a reload (HUP),
-- which runs init_by_lua again, and a reload is not a restart (the documents are still there).
function M.init()
  local id
  local f = io.open("/dev/urandom", "rb")
  if f then
    id = f:read(8):gsub(".", function(c) return string.format("%02x", c:byte()) end)
    f:close()
  else
    id = ngx.md5(tostring(ngx.now()) .. tostring(math.random()) .. tostring({})):sub(1, 16)
  end
  ngx.shared.berth_routes:add("boot", id)
end

-- The sum of every attempt's time in $upstream_response_time ("0.010, 0.002 : 0.001"; "-" for
-- none), or nil when no upstream answered.
local function upstream_time(value)
  if not value then return nil end
  local sum, any = 0, false
  for n in value:gmatch("[%d.]+") do
    sum, any = sum + (tonumber(n) or 0), true
  end
  return any and sum or nil
end

function M.log()
  local ctx = ngx.ctx.berth
  if not ctx or not ctx.app or not ctx.version then return end
  local dict = ngx.shared.berth_stats
  local prefix = ctx.app .. SEP .. ctx.version .. SEP
  -- incr with an initial value: the first request creates the key (0.10.6+).
  dict:incr(prefix .. "requests", 1, 0)
  local class = CLASSES[math.floor(ngx.status / 100)]
  if class then dict:incr(prefix .. class, 1, 0) end
  local t = upstream_time(ngx.var.upstream_response_time)
  if t then
    dict:incr(prefix .. "latency_sum", t, 0)
    dict:incr(prefix .. "latency_count", 1, 0)
  end
end

-- What GET /stats answers.
function M.snapshot()
  local dict = ngx.shared.berth_stats
  local apps = {}
  for _, key in ipairs(dict:get_keys(0)) do
    local app, version, counter = key:match("^([^|]+)|([^|]+)|([^|]+)$")
    local value = app and dict:get(key)
    if value then
      apps[app] = apps[app] or {}
      local v = apps[app][version]
      if not v then
        v = { requests = 0, status = { ["2xx"] = 0, ["3xx"] = 0, ["4xx"] = 0, ["5xx"] = 0 },
              upstreamLatencySum = 0, upstreamLatencyCount = 0 }
        apps[app][version] = v
      end
      if counter == "requests" then v.requests = value
      elseif counter == "latency_sum" then v.upstreamLatencySum = value
      elseif counter == "latency_count" then v.upstreamLatencyCount = value
      elseif v.status[counter] then v.status[counter] = value end
    end
  end
  return { apps = apps,
           free = { berth_routes = ngx.shared.berth_routes:free_space(), berth_stats = dict:free_space() } }
end

return M
