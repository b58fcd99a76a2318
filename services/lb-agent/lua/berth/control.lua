-- The agent's control endpoints on nginx's local unix socket (docs/traffic.md, "The lb-agent and
-- its nginx"): routing documents in and out of the `berth_routes` dict, counters out of
-- `berth_stats`. `GET /generation` is answered by the rendered config itself, not here.
--
--   PUT    /routes/{app}             store a routing document (409 when older than the stored one)
--   DELETE /routes/{app}?revision=R  the app routes nowhere
--   GET    /routes                   boot id, free bytes, per app revision, md5 digest, generation
--   GET    /stats                    per app and version counters
local cjson = require("cjson.safe").new()
local stats = require("berth.stats")

-- Numbers print with 14 significant digits (Debian's lua-cjson allows no more): etcd revisions
-- stay below 10^14, so they print as integers.

local M = {}

local function reply(status, body)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.say(cjson.encode(body))
  return ngx.exit(status)
end

local function is_table(v) return type(v) == "table" end
local function is_count(v) return type(v) == "number" and v >= 0 and v == math.floor(v) end

-- Why `doc` is not a routing document for `app`, or nil when it is one.
local function invalid(doc, app)
  if not is_table(doc) then return "body is not a JSON object" end
  if doc.app ~= app then return "app must be " .. app end
  if not is_count(doc.revision) then return "revision must be a non-negative integer" end
  if doc.weights ~= nil and doc.weights ~= cjson.null then
    if not is_table(doc.weights) then return "weights must be null or an object" end
    for v, w in pairs(doc.weights) do
      if type(v) ~= "string" or type(w) ~= "number" or w < 0 then return "weights." .. tostring(v) .. " must be a number >= 0" end
    end
  end
  local st = doc.stickiness
  if st ~= nil and st ~= cjson.null
      and not (is_table(st) and (type(st.cookie) == "string" or type(st.header) == "string")) then
    return "stickiness must be null, {\"cookie\":name} or {\"header\":name}"
  end
  if not is_table(doc.versions) then return "versions must be an object" end
  for v, peers in pairs(doc.versions) do
    if type(v) ~= "string" or not is_table(peers) then return "versions." .. tostring(v) .. " must be a list" end
    for i, p in ipairs(peers) do
      local where = "versions." .. v .. "[" .. (i - 1) .. "]"
      if not is_table(p) or type(p.address) ~= "string" then return where .. ".address must be a string" end
      if not is_table(p.ports) then return where .. ".ports must be an object" end
      for name, port in pairs(p.ports) do
        if not is_count(port) or port < 1 or port > 65535 then return where .. ".ports." .. tostring(name) .. " must be a port" end
      end
    end
  end
  return nil
end

-- The request body, also when nginx buffered it to a file (larger than client_body_buffer_size).
local function read_body()
  ngx.req.read_body()
  local data = ngx.req.get_body_data()
  if data then return data end
  local path = ngx.req.get_body_file()
  if not path then return nil end
  local f = io.open(path, "rb")
  if not f then return nil end
  data = f:read("*a")
  f:close()
  return data
end

local function put_route(routes, app)
  local body = read_body()
  local doc = body and cjson.decode(body)
  local why = invalid(doc, app)
  if why then return reply(400, { error = "bad document", message = why }) end

  local stored = routes:get("rev:" .. app)
  local forced = ngx.var.http_x_berth_force == "1"
  if stored and stored > doc.revision and not forced then
    return reply(409, { error = "stale", revision = stored })
  end
  -- safe_set never evicts another app's document: a full dict is the agent's to report.
  -- The generation moves last, so a worker that sees it move finds the new document.
  local ok = routes:safe_set("doc:" .. app, body)
  ok = ok and routes:safe_set("rev:" .. app, doc.revision)
  local gen = ok and routes:incr("gen:" .. app, 1, 0)
  if not gen then return reply(507, { error = "dict full" }) end
  return reply(200, { app = app, revision = doc.revision, generation = gen })
end

local function delete_route(routes, app)
  local revision = tonumber(ngx.var.arg_revision)
  if not is_count(revision) then return reply(400, { error = "bad request", message = "revision must be an integer" }) end
  local stored = routes:get("rev:" .. app)
  if stored and stored > revision and ngx.var.http_x_berth_force ~= "1" then
    return reply(409, { error = "stale", revision = stored })
  end
  -- The revision stays, so a slower push of an older document cannot bring the app back.
  routes:delete("doc:" .. app)
  routes:safe_set("rev:" .. app, revision)
  local gen = routes:incr("gen:" .. app, 1, 0)
  return reply(200, { app = app, revision = revision, generation = gen })
end

local function list_routes(routes)
  local apps = {}
  for _, key in ipairs(routes:get_keys(0)) do
    local app = key:match("^doc:(.+)$")
    local body = app and routes:get(key)
    if body then
      apps[app] = { revision = routes:get("rev:" .. app), digest = ngx.md5(body),
                    generation = routes:get("gen:" .. app) }
    end
  end
  return reply(200, { boot = routes:get("boot"), free = routes:free_space(), apps = apps })
end

function M.handle()
  local routes = ngx.shared.berth_routes
  local method, uri = ngx.req.get_method(), ngx.var.uri
  local app = uri:match("^/routes/([a-z0-9-]+)$")
  if app and method == "PUT" then return put_route(routes, app) end
  if app and method == "DELETE" then return delete_route(routes, app) end
  if uri == "/routes" and method == "GET" then return list_routes(routes) end
  if uri == "/stats" and method == "GET" then return reply(200, stats.snapshot()) end
  return reply(404, { error = "not found", message = method .. " " .. uri })
end

return M
