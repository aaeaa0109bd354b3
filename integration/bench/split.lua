-- Variant (c) of `make bench`: the same split as traffic-shift, written as an
-- Envoy Lua filter (LuaJIT). FNV-1a 64 via LuaJIT's FFI 64-bit integers,
-- bucket = h mod 10000, shifted iff bucket < 1000 (10 %) on /api/auth/.
local ffi = require("ffi")
local OFFSET = 0xcbf29ce484222325ULL
local PRIME = 0x100000001b3ULL

local function bucket(key)
  local h = OFFSET
  for i = 1, #key do
    h = bit.bxor(h, key:byte(i)) * PRIME
  end
  return tonumber(h % 10000ULL)
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local path = headers:get(":path")
  if path == nil or path:sub(1, 10) ~= "/api/auth/" then
    return
  end
  local key = headers:get("x-request-id")
  local target = "monolith"
  if key ~= nil and key ~= "" and bucket(key) < 1000 then
    target = "auth_service"
  end
  headers:replace("x-shift-target", target)
  handle:clearRouteCache()
end
