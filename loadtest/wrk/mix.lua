-- A weighted mix: 80% GET /v1/offers (a few hot queries, so mostly cache hits), 20% GET /health.
--   GPX_KEY=gpx_... wrk -t2 -c128 -d60s --latency -s loadtest/wrk/mix.lua https://localhost:8443
-- wrk2 at a fixed rate: add -R <requests/s> (needs wrk2: Debian's wrk has no -R).
-- Weights and queries: GPX_OFFERS_WEIGHT (0-100, default 80).
local key = os.getenv("GPX_KEY")
if key == nil or key == "" then
  error("set GPX_KEY to an API key (the demo prints one)")
end
local weight = tonumber(os.getenv("GPX_OFFERS_WEIGHT") or "80")
local queries = {
  "/v1/offers?gpu=RTX%204090&sort=price&limit=20",
  "/v1/offers?gpu=A100&min_gpus=2&limit=20",
  "/v1/offers?providers=vastai&sort=reliability&limit=50",
  "/v1/offers?max_price=2&countries=US,CA&limit=20",
}
-- status counts per thread (each wrk thread has its own Lua state), summed in done()
local threads = {}
function setup(thread) table.insert(threads, thread) end
ok, limited, other = 0, 0, 0

function init(args)
  math.randomseed(os.time() + (tonumber(tostring({}):sub(8)) or 0))
end

function request()
  if math.random(100) <= weight then
    local q = queries[math.random(#queries)]
    return wrk.format("GET", q, { ["Authorization"] = "Bearer " .. key })
  end
  return wrk.format("GET", "/health")
end

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
