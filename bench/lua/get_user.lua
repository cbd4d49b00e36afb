-- GET /v1/users/{id} over random existing ids, from the file that BENCH_IDS names (one id a line).
--
-- Every request is formatted once, so that the load generator's own cost per request is a table
-- look-up, as in health.lua: the comparison is between the servers' answers.
--
-- The formatting happens in the main Lua state, before wrk starts its first thread, and each
-- thread gets a copy. wrk starts each thread as soon as that thread is set up, but times the run
-- from when the last one has started, while it counts every request. Formatting 100,000 requests
-- in each thread's `init` (about 0.4 s, and up to a second under load) let the first thread's
-- requests in the meantime count without their time. The second thread's copy still takes about
-- 0.1 s under load.
local common = require "common"
allowed = { [200] = true }
common.count_errors_only()

-- Main state only: made for the first thread, copied into every thread.
local formatted
local setup_thread = setup

function setup(thread)
  setup_thread(thread)
  if not formatted then
    local path = assert(os.getenv("BENCH_IDS"), "BENCH_IDS names no file of user ids")
    local before, after = wrk.format("GET", "/v1/users/{id}"):match("^(.-){id}(.*)$")
    formatted = {}
    for i, id in ipairs(common.read_lines(path)) do
      formatted[i] = before .. id .. after
    end
  end
  thread:set("requests", formatted)
end

function init(args)
  common.seed_random()
end

function request()
  return requests[math.random(#requests)]
end
