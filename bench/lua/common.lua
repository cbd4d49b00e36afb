-- Shared by the wrk scripts in this directory (they `require "common"`; run wrk with
-- LUA_PATH="bench/lua/?.lua;;"). Counts status codes in every thread and prints one summary
-- line that scripts/bench.sh parses:
--
--   BENCH requests=… duration_s=… rps=… p50_ms=… p90_ms=… p99_ms=… max_ms=… socket_errors=…
--         bad_status=… errors=… statuses=200:…,409:…
--
-- `errors` is socket errors (connect, read, write, timeout) plus responses whose status is not
-- in the script's `allowed` set.

local common = {}

-- Protected routes need a bearer token; scripts/bench.sh logs in as an admin and exports it.
local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

local threads = {}
local next_tid = 0

-- Statuses that count as success; a script replaces this before the run.
allowed = { [200] = true }
statuses = {}

function common.read_lines(path)
  local lines = {}
  local file = assert(io.open(path, "r"), "cannot open " .. tostring(path))
  for line in file:lines() do
    if line ~= "" then
      lines[#lines + 1] = line
    end
  end
  file:close()
  assert(#lines > 0, "no lines in " .. path)
  return lines
end

function common.seed_random()
  math.randomseed(os.time() * 1000 + (tid or 0) * 7919)
  for _ = 1, 10 do math.random() end
end

-- Runs in the main Lua state, once per thread, before the thread starts.
function setup(thread)
  next_tid = next_tid + 1
  thread:set("tid", next_tid)
  threads[#threads + 1] = thread
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

-- For a script whose only allowed status is 200: wrk hands every response's headers and body
-- to `response` as Lua values, which costs the load generator more per request than a small
-- answer costs the server. Without it, wrk itself counts statuses of 400 and above as errors,
-- and the summary reports the rest as "<400".
function common.count_errors_only()
  response = nil
end

function done(summary, latency, requests)
  local totals = {}
  for _, thread in ipairs(threads) do
    local counted = thread:get("statuses") or {}
    for status, n in pairs(counted) do
      totals[status] = (totals[status] or 0) + n
    end
  end
  local codes = {}
  for status in pairs(totals) do codes[#codes + 1] = status end
  table.sort(codes)
  local parts, bad = {}, 0
  for _, status in ipairs(codes) do
    parts[#parts + 1] = status .. ":" .. totals[status]
    if not allowed[status] then bad = bad + totals[status] end
  end
  local e = summary.errors
  if response == nil then
    parts = { "<400:" .. (summary.requests - e.status) }
    if e.status > 0 then parts[2] = ">=400:" .. e.status end
    bad = e.status
  end
  local socket = e.connect + e.read + e.write + e.timeout
  local seconds = summary.duration / 1e6
  io.write(string.format(
    "BENCH requests=%d duration_s=%.3f rps=%.1f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f " ..
    "max_ms=%.3f socket_errors=%d bad_status=%d errors=%d statuses=%s\n",
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000,
    socket, bad, socket + bad, table.concat(parts, ",")))
end

return common
