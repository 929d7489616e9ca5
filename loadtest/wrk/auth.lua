-- Authenticated requests: every request carries `Authorization: Bearer $GPX_KEY`.
--   GPX_KEY=gpx_... wrk -t2 -c64 -d30s --latency -s loadtest/wrk/auth.lua https://localhost:8443/v1/account
-- With wrk2 at a fixed rate (coordinated-omission-corrected latencies), add -R <requests/s>:
--   GPX_KEY=gpx_... wrk -t2 -c64 -d60s -R 20000 --latency -s loadtest/wrk/auth.lua https://localhost:8443/v1/account
-- Debian's wrk has no -R (it runs open-loop as fast as it can); the script works with both.
local key = os.getenv("GPX_KEY")
if key == nil or key == "" then
  error("set GPX_KEY to an API key (the demo prints one)")
end
wrk.headers["Authorization"] = "Bearer " .. key

-- status counts per thread (each wrk thread has its own Lua state), summed in done()
local threads = {}
function setup(thread) table.insert(threads, thread) end
ok, limited, other = 0, 0, 0
function response(status, headers, body)
  if status < 400 then ok = ok + 1 elseif status == 429 then limited = limited + 1 else other = other + 1 end
end

function done(summary, latency, requests)
  local o, l, x = 0, 0, 0
  for _, t in ipairs(threads) do
    o, l, x = o + t:get("ok"), l + t:get("limited"), x + t:get("other")
  end
  io.write(string.format("statuses: ok=%d rate_limited=%d other_errors=%d\n", o, l, x))
end
