-- POST /v1/orders for a random user with 1–3 distinct random products, quantity 1 each.
-- Arguments: the file of user ids, the file of product ids, and how many products to draw from
-- (the first N of the file; 0 or absent: all of them). 201 and 409 are the allowed answers.
local common = require "common"
allowed = { [201] = true, [409] = true }
local users, products, pool
-- An explicit header table replaces wrk.headers, so the admin's token (common.lua) goes in too.
local headers = { ["Content-Type"] = "application/json", ["Authorization"] = wrk.headers["Authorization"] }

function init(args)
  users = common.read_lines(args[1])
  products = common.read_lines(args[2])
  pool = tonumber(args[3] or "0")
  if pool == nil or pool <= 0 or pool > #products then pool = #products end
  common.seed_random()
end

function request()
  local lines = math.min(math.random(3), pool)
  local chosen, items = {}, {}
  while #items < lines do
    local p = math.random(pool)
    if not chosen[p] then
      chosen[p] = true
      items[#items + 1] = '{"product_id":"' .. products[p] .. '","quantity":1}'
    end
  end
  local body = '{"user_id":"' .. users[math.random(#users)] .. '","items":[' ..
    table.concat(items, ",") .. ']}'
  return wrk.format("POST", "/v1/orders", headers, body)
end
