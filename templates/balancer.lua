-- wicket's endpoint balancer (ARCHITECTURE.md, "Endpoints without a
-- reload"). nginx.conf includes this file in init_by_lua_block; it holds no
-- value from any object. Every upstream calls wicket.balance(NAME, COUNT),
-- COUNT being how many servers the upstream block lists; one with a
-- policy (affinity, hashing) calls wicket.balance(NAME, COUNT, POLICY,
-- "ADDR ADDR ..."), with its servers, and reads the policy's parameters
-- from variables its location set ($wicket_hash_key, $wicket_sticky_*). An upstream with
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

-- The endpoints of a policy upstream that got no update: the servers its
-- block lists, as the config wrote them into its balancer call (parsed
-- once per list).
local static = {}

local function static_list(name, list)
  local s = static[name]
  if s == nil or s.list ~= list then
    local t = parse_list(list)
    if t == nil then
      return nil
    end
    s = { list = list, t = t }
    static[name] = s
  end
  return s.t
end

-- Rendezvous hashing: the endpoint with the highest score for this key (a
-- key keeps its endpoint while it exists; a new endpoint takes only the
-- keys it scores highest for).
local crc32 = ngx.crc32_short
local function score(key, addr)
  return crc32(key .. "\0" .. addr)
end

local function by_key(u, key)
  local best, best_score = 1, -1
  for j = 1, u.n do
    local v = score(key, u.addr[j])
    if v > best_score then
      best, best_score = j, v
    end
  end
  return best
end

-- The SIZE endpoints with the highest scores for the key, then one of them
-- at random.
local function by_key_subset(u, key, size)
  if size >= u.n then
    return math.random(u.n)
  end
  local ranked = {}
  for j = 1, u.n do
    ranked[j] = { j, score(key, u.addr[j]) }
  end
  table.sort(ranked, function(a, b) return a[2] > b[2] end)
  return ranked[math.random(size)][1]
end

-- The cookie of affinity: NAME=VALUE with the attributes the location set.
local function set_cookie(value)
  local var = ngx.var
  local path = var.wicket_sticky_path
  if path == nil or path == "" then
    -- The location's NAMESPACE|INGRESS|SERVICE|PORT|PATH (nginx.conf):
    -- read here, not through the regex map of $location_path.
    path = match(var.wicket_loc or "", "^[^|]*|[^|]*|[^|]*|[^|]*|(.*)$")
    -- A regular expression is no cookie path.
    if path == nil or path == "" or find(path, "[^%w/%-%._~]") then
      path = "/"
    end
  end
  local parts = { var.wicket_sticky_name, "=", value, "; Path=", path, var.wicket_sticky_attrs or "" }
  local expires = tonumber(var.wicket_sticky_expires or "")
  if expires then
    parts[#parts + 1] = "; Expires=" .. ngx.cookie_time(ngx.time() + expires)
  end
  if var.https == "on" and not find(var.wicket_sticky_attrs or "", "; Secure", 1, true) then
    parts[#parts + 1] = "; Secure"
  end
  parts[#parts + 1] = "; HttpOnly"
  var.wicket_sticky_set = concat(parts)
end

local md5 = ngx.md5

-- The endpoint of a sticky upstream for this request, or nil (round robin
-- then chooses, and the cookie is set to it).
local function sticky(u, persistent, failed)
  local var = ngx.var
  local name = var.wicket_sticky_name
  if name == nil or name == "" then
    return nil
  end
  local value = var["cookie_" .. name]
  if value ~= nil and not find(value, "^%x+$") then
    value = nil
  end
  if persistent then
    if value ~= nil and not failed then
      for j = 1, u.n do
        if md5(u.addr[j]) == value then
          return j
        end
      end
    end
    return nil
  end
  if value == nil or (failed and var.wicket_sticky_change == "1") then
    value = md5(ngx.now() .. " " .. math.random() .. " " .. ngx.worker.pid())
    set_cookie(value)
  end
  return by_key(u, value)
end

function wicket.balance(name, servers, policy, list)
  local u = peers[name]
  if u == nil and policy ~= nil then
    u = static_list(name, list)
  end
  if u == nil then
    return
  end
  local n = u.n
  if n == 0 then
    return set_current_peer(UNAVAILABLE)
  end
  local failed = get_last_failure() ~= nil
  local i
  if policy == "hash" or policy == "hash-subset" then
    local key = ngx.var.wicket_hash_key
    if key ~= nil and key ~= "" and not failed then
      if policy == "hash" then
        i = by_key(u, key)
      else
        i = by_key_subset(u, key, tonumber(ngx.var.wicket_hash_subset or "") or 3)
      end
    end
  elseif policy == "sticky" or policy == "sticky-persistent" then
    local persistent = policy == "sticky-persistent"
    i = sticky(u, persistent, failed)
    if i ~= nil and failed then
      -- A retry goes elsewhere, whatever the cookie says.
      i = nil
    end
    if i == nil then
      if failed then
        i = after_failed(u)
      else
        i = u.i % n + 1
      end
      if persistent and (not failed or ngx.var.wicket_sticky_change == "1") then
        set_cookie(md5(u.addr[i]))
      end
    end
  end
  if i == nil then
    if n == 1 then
      i = 1
    elseif not failed then
      i = u.i % n + 1
    else
      i = after_failed(u)
    end
  end
  if not failed and n > servers then
    -- nginx gives a request as many tries as the config lists servers.
    set_more_tries(n - servers)
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

-- What a location answers before its other handlers, in place of `if`
-- blocks (templates/location.conf says why), at the end of the rewrite
-- phase, before authentication: with CODE, a request over plain HTTP is
-- redirected to HTTPS (PORT ":N" or "", KEEP_SLASH: $request_uri rather
-- than $wicket_redirect_uri); with CORS, a preflight of an allowed origin
-- ($wicket_cors is "1o": the location's policy set it) gets 204, the
-- location's more_set_headers adding the CORS headers.
function wicket.edge(code, port, keep_slash, cors)
  local var = ngx.var
  if code and var.pass_access_scheme == "http" then
    local uri = keep_slash and var.request_uri or var.wicket_redirect_uri
    return ngx.redirect("https://" .. var.wicket_redirect_host .. port .. uri, code)
  end
  if cors and var.wicket_cors == "1o" then
    return ngx.exit(204)
  end
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
