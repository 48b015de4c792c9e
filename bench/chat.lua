-- wrk script: POST a chat (or Responses, or Messages) request whose prompt is unique on every
-- request.
--   BENCH_STREAM=1  ask for a streamed answer (default: not streamed)
--   BENCH_API=...   "chat" (default): a chat completions body, for /v1/chat/completions;
--                   "responses": the same request as a Responses body (instructions + input),
--                   for /v1/responses; "messages": as an Anthropic Messages body (system +
--                   messages + max_tokens), for /v1/messages
--   BENCH_KEY=...   sent as "Authorization: Bearer ..." (default: none)
--   BENCH_RUN=...   a token unique to this wrk run, so that prompts never repeat across runs
--                   against one proxy process (its verdict cache would answer them)
-- The URL given to wrk carries the path, e.g. http://127.0.0.1:8080/v1/chat/completions

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local stream = os.getenv("BENCH_STREAM")
stream = (stream == "1" or stream == "true") and "true" or "false"
local key = os.getenv("BENCH_KEY")
local headers = { ["Content-Type"] = "application/json" }
if key and key ~= "" then
  headers["Authorization"] = "Bearer " .. key
end

local run = os.getenv("BENCH_RUN") or tostring(os.time())
local counter = 0
local system = "You are a helpful assistant."
local prompt = "Request %d of thread %d, run %s: write two short sentences about the weather "
  .. "in a coastal town in spring."
local template
local api = os.getenv("BENCH_API")
if api == "responses" then
  template = '{"model":"bench-model","stream":' .. stream .. ',"temperature":0.7,'
    .. '"instructions":"' .. system .. '","input":"' .. prompt .. '"}'
elseif api == "messages" then
  template = '{"model":"bench-model","stream":' .. stream .. ',"temperature":0.7,'
    .. '"max_tokens":256,"system":"' .. system .. '",'
    .. '"messages":[{"role":"user","content":"' .. prompt .. '"}]}'
else
  template = '{"model":"bench-model","stream":' .. stream .. ',"temperature":0.7,'
    .. '"messages":[{"role":"system","content":"' .. system .. '"},'
    .. '{"role":"user","content":"' .. prompt .. '"}]}'
end

function request()
  counter = counter + 1
  return wrk.format("POST", nil, headers, string.format(template, counter, tid or 0, run))
end
