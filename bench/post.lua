-- wrk script for bench/run.sh: POSTs one JSON body with the gateway's
-- headers and counts every response that would not satisfy a client, so
-- that a run full of errors is never reported as fast.
--
-- Environment (read in every wrk thread):
--   ZGBENCH_PATH     request path, e.g. /v1/chat/completions
--   ZGBENCH_BODY     the JSON body
--   ZGBENCH_EXPECT   a string every good response body contains
--                    (for a stream: the final "[DONE]", so a stream cut
--                    short counts as bad even with a 200 status)
--   ZGBENCH_KEY      bearer token (optional)
--
-- done() prints one machine-readable line that run.sh parses:
--   ZGBENCH requests=N duration_us=N rps=F p50_us=N p99_us=N bad_status=N
--           bad_body=N socket_errors=N

wrk.method = "POST"
wrk.path = os.getenv("ZGBENCH_PATH") or "/"
wrk.body = os.getenv("ZGBENCH_BODY") or "{}"
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("ZGBENCH_KEY")
if key and key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end
local expect = os.getenv("ZGBENCH_EXPECT") or ""

-- Each wrk thread has its own Lua state; done() runs in yet another one
-- and reads the per-thread counters through these handles.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  bad_status = 0
  bad_body = 0
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    bad_status = bad_status + 1
  elseif expect ~= "" and (body == nil or not string.find(body, expect, 1, true)) then
    bad_body = bad_body + 1
  end
end

function done(summary, latency, requests)
  local bad_s, bad_b = 0, 0
  for _, thread in ipairs(threads) do
    bad_s = bad_s + (thread:get("bad_status") or 0)
    bad_b = bad_b + (thread:get("bad_body") or 0)
  end
  local e = summary.errors
  local socket_errors = e.connect + e.read + e.write + e.timeout
  local seconds = summary.duration / 1e6
  local rps = 0
  if seconds > 0 then rps = summary.requests / seconds end
  io.write(string.format(
    "ZGBENCH requests=%d duration_us=%d rps=%.2f p50_us=%d p99_us=%d " ..
    "bad_status=%d bad_body=%d socket_errors=%d\n",
    summary.requests, summary.duration, rps,
    latency:percentile(50), latency:percentile(99),
    bad_s, bad_b, socket_errors))
end
