-- wicket's endpoint balancer (ARCHITECTURE.md, "Endpoints without a
-- reload"). nginx.conf includes this file in init_by_lua_block; it holds no
-- value from any object. Every upstream calls wicket.balance(NAME, COUNT),
-- COUNT being how many servers the upstream block lists. An upstream with
-- no update since nginx loaded the config keeps nginx's own round robin over
-- those servers (the Lua code returns without choosing); one that wicket
-- updated through /wicket/endpoints on the status socket is balanced here,
-- round robin over the endpoints of the update.
--
-- The shared dictionary wicket_endpoints holds the updates of one config
-- generation: "g" the generation, "v" the count of updates, "c:V" the names
-- update V changed, "u:NAME" an upstream's endpoints ("ADDR ADDR ...").
-- Each worker applies them to its own table every 0.1 s, and at its start
-- (a worker started by a reload or after a crash serves what was updated).
local balancer = require "ngx.balancer"
local set_current_peer = balancer.set_current_peer
local set_more_tries = balancer.set_more_tries
local get_last_failure = balancer.get_last_failure
local byte, find, sub, match, gmatch = string.byte, string.find, string.sub, string.match, string.gmatch
local concat, tonumber = table.concat, tonumber

local wicket = { generation = -1 }
local dict = ngx.shared.wicket_endpoints
-- upstream name -> { n = COUNT, i = last index, addr = { "H:P" ... }, H1, P1, H2, P2, ... }
local peers = {}
-- the last update applied from the dictionary
local seen = 0

-- Where an upstream without endpoints sends requests: a server of this
-- config that answers 503.
local UNAVAILABLE = "unix:wicket-unavailable.sock"
local MAX_ENDPOINTS = 65536
local MAX_NAME = 253

-- "A.B.C.D:PORT" or "[IPV6]:PORT" -> host, port; or nil, reason.
local function parse_addr(s)
  local host, port
  if byte(s, 1) == 91 then
    local close = find(s, "]:", 2, true)
    if not close then
      return nil, "not an address"
    end
    local inner = sub(s, 2, close - 1)
    if #inner < 2 or #inner > 45 or not find(inner, "^[%x:%.]+$") or not find(inner, ":", 1, true) then
      return nil, "not an IPv6 address"
    end
    -- set_current_peer takes an IPv6 address in brackets.
    host, port = sub(s, 1, close), sub(s, close + 2)
  else
    local a, b, c, d, p = match(s, "^(%d%d?%d?)%.(%d%d?%d?)%.(%d%d?%d?)%.(%d%d?%d?):(%d+)$")
    if not a then
      return nil, "not an address"
    end
    if tonumber(a) > 255 or tonumber(b) > 255 or tonumber(c) > 255 or tonumber(d) > 255 then
      return nil, "not an IPv4 address"
    end
    host, port = sub(s, 1, #s - #p - 1), p
  end
  if not find(port, "^%d%d?%d?%d?%d?$") then
    return nil, "not a port"
  end
  local n = tonumber(port)
  if n < 1 or n > 65535 then
    return nil, "not a port"
  end
  return host, n
end

-- "ADDR ADDR ..." -> the table balance uses; or nil, reason.
local function parse_list(s)
  local t = { n = 0, i = 0, addr = {} }
  for a in gmatch(s, "%S+") do
    local host, port = parse_addr(a)
    if not host then
      return nil, port .. ": " .. a
    end
    local n = t.n + 1
    if n > MAX_ENDPOINTS then
      return nil, "more than " .. MAX_ENDPOINTS .. " endpoints"
    end
    t.n = n
    t.addr[n] = a
    t[2 * n - 1] = host
    t[2 * n] = port
  end
  -- Workers start at different endpoints.
  if t.n > 0 then
    t.i = math.random(t.n) - 1
  end
  return t
end

local function apply(name)
  local s = dict:get("u:" .. name)
  if s == nil then
    peers[name] = nil
  else
    peers[name] = parse_list(s)
  end
end

local function apply_all()
  peers = {}
  for _, k in ipairs(dict:get_keys(0)) do
    if sub(k, 1, 2) == "u:" then
      apply(sub(k, 3))
    end
  end
  seen = dict:get("v") or 0
end

-- Applies the updates this worker has not seen.
local function sync()
  if dict:get("g") ~= wicket.generation then
    return
  end
  local v = dict:get("v") or 0
  if v == seen then
    return
  end
  for k = seen + 1, v do
    local names = dict:get("c:" .. k)
    if names == nil then
      return apply_all()
    end
    for name in gmatch(names, "%S+") do
      apply(name)
    end
  end
  seen = v
end

function wicket.init_worker()
  math.randomseed(ngx.now() * 1000 + ngx.worker.pid())
  if dict:get("g") == wicket.generation then
    apply_all()
  end
  ngx.timer.every(0.1, sync)
end

-- The index of the endpoint after the one a failed attempt went to.
local function after_failed(u)
  local tried = ngx.var.upstream_addr or ""
  local last = match(tried, "([^%s,]+)[%s,]*$")
  for j = 1, u.n do
    if u.addr[j] == last then
      return j % u.n + 1
    end
  end
  return u.i % u.n + 1
end

function wicket.balance(name, servers)
  local u = peers[name]
  if u == nil then
    return
  end
  local n = u.n
  if n == 0 then
    return set_current_peer(UNAVAILABLE)
  end
  local i
  if n == 1 then
    i = 1
  elseif get_last_failure() == nil then
    i = u.i % n + 1
    -- nginx gives a request as many tries as the config lists servers.
    if n > servers then
      set_more_tries(n - servers)
    end
  else
    i = after_failed(u)
  end
  u.i = i
  local ok, err = set_current_peer(u[2 * i - 1], u[2 * i])
  if not ok then
    ngx.log(ngx.ERR, "wicket: endpoint ", u.addr[i], " of ", name, ": ", err)
    return ngx.exit(ngx.ERROR)
  end
end

local function answer(status, body)
  ngx.status = status
  ngx.header["Content-Type"] = "text/plain"
  ngx.print(body)
  return ngx.exit(status)
end

-- POST: "wicket-endpoints GENERATION\n" then "NAME [ADDR ...]\n" per
-- upstream. Everything is checked before anything changes.
local function update()
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  if body == nil then
    return answer(400, "no body (or one larger than the buffer)\n")
  end
  local lines = {}
  for line in gmatch(body, "[^\n]+") do
    lines[#lines + 1] = line
  end
  local g = match(lines[1] or "", "^wicket%-endpoints (%d+)$")
  if g == nil then
    return answer(400, "line 1: expected \"wicket-endpoints GENERATION\"\n")
  end
  if tonumber(g) ~= wicket.generation then
    return answer(409, "this worker runs generation " .. wicket.generation .. ", not " .. g .. "\n")
  end
  local names, lists = {}, {}
  for k = 2, #lines do
    local name, rest = match(lines[k], "^([%w_%.%-]+)(.*)$")
    if name == nil or #name > MAX_NAME then
      return answer(400, "line " .. k .. ": not an upstream name\n")
    end
    if rest ~= "" and byte(rest, 1) ~= 32 then
      return answer(400, "line " .. k .. ": not an upstream name\n")
    end
    local t, err = parse_list(rest)
    if t == nil then
      return answer(400, "line " .. k .. ": " .. err .. "\n")
    end
    names[#names + 1] = name
    lists[#lists + 1] = concat(t.addr, " ")
  end
  if #names == 0 then
    return answer(400, "no upstream\n")
  end
  if dict:get("g") ~= wicket.generation then
    dict:flush_all()
    dict:flush_expired()
    dict:set("g", wicket.generation)
    dict:set("v", 0)
  end
  for k = 1, #names do
    local ok, err = dict:safe_set("u:" .. names[k], lists[k])
    if not ok then
      return answer(507, "storing " .. names[k] .. ": " .. err .. "\n")
    end
  end
  local v = dict:incr("v", 1, 0)
  local ok, err = dict:safe_set("c:" .. v, concat(names, " "), 600)
  if not ok then
    return answer(507, "storing update " .. v .. ": " .. err .. "\n")
  end
  sync()
  return answer(200, "version " .. v .. "\n")
end

-- GET: this worker's endpoints of the upstreams updated since the config
-- was loaded, "NAME ADDR ..." per line after "generation G version V".
local function report()
  sync()
  local out = { "generation " .. wicket.generation .. " version " .. seen }
  local names = {}
  for name in pairs(peers) do
    names[#names + 1] = name
  end
  table.sort(names)
  for _, name in ipairs(names) do
    local addr = concat(peers[name].addr, " ")
    out[#out + 1] = addr == "" and name or name .. " " .. addr
  end
  return answer(200, concat(out, "\n") .. "\n")
end

function wicket.serve()
  local method = ngx.req.get_method()
  if method == "POST" then
    return update()
  elseif method == "GET" then
    return report()
  end
  return answer(405, "GET or POST\n")
end

return wicket
