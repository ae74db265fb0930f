"""Lua scripts of the adapter and clip stores.

Each single-task operation is one script, so it is atomic on the Redis server and one round trip: a reader never
sees a pointer whose record or bytes are missing, and the sync and async stores only differ in how they await it.
Every key a script touches comes in as ``KEYS`` (built by ``vpetl.store.keys``; all of one task's keys share a
hash tag), so the scripts run unchanged on a standalone Redis and on Redis Cluster. The global indexes
(``vpetl:tasks:index``, ``vpetl:cliptasks``) live in another slot and are maintained by the callers, outside the
scripts.
Scripts find a record's sha256 with a pattern match instead of decoding the caller's metadata: the store writes
``version``, ``task``, ``sha256`` first, and a task name cannot contain a quote, so the first ``"sha256":"…"`` is
always the store's own.
"""

from __future__ import annotations

# Status codes in the first element of a script reply.
OK = 1
NO_TASK = 0
NO_VERSION = -1
NO_BLOB = -2
ALREADY = 2  # publish: this job id had already published (the reply holds that version's record)

# KEYS: task, versions, blobs, jobs. ARGV: task, record body (JSON without version), now, sha256, channel, bytes,
# job id ('' = none), keep (retention: how many of the newest versions stay; '0' = all).
# Reply: {1, record, versions pruned} for a new version, {2, record} when this job id already published one.
PUBLISH = """
-- a training job publishes at most one version: a retry (the worker died after publishing, or a takeover) gets
-- the version its job already made, in the same atomic step that would otherwise have made a new one
if ARGV[7] ~= '' then
  local done = redis.call('HGET', KEYS[4], ARGV[7])
  if done then
    local earlier = redis.call('HGET', KEYS[2], done)
    if earlier then return {2, earlier} end
  end
end
-- the bytes come with the script, so the blob, the record and the pointer appear together or not at all
redis.call('HSETNX', KEYS[3], ARGV[4], ARGV[6])
local v = redis.call('HINCRBY', KEYS[1], 'latest', 1)
local record = '{"version":' .. v .. ',' .. string.sub(ARGV[2], 2)
redis.call('HSET', KEYS[2], v, record)
redis.call('HSETNX', KEYS[1], 'created_at', ARGV[3])
-- the pointer moves last (the script is atomic anyway; this keeps the order right if it ever is not)
redis.call('HSET', KEYS[1], 'updated_at', ARGV[3], 'current', v)
if ARGV[7] ~= '' then redis.call('HSET', KEYS[4], ARGV[7], v) end
redis.call('PUBLISH', ARGV[5], cjson.encode({event='publish', task=ARGV[1], version=v, sha256=ARGV[4]}))
-- retention, in the same atomic script (same slot): keep the newest `keep` versions. The version just published
-- is the newest and the current one, so the current version is never pruned; there is no pin to honour. A job
-- whose version was pruned simply publishes anew if it is ever retried (its map entry names no record).
local keep = tonumber(ARGV[8]) or 0
local pruned = 0
if keep > 0 and redis.call('HLEN', KEYS[2]) > keep then
  local numbers = {}
  for _, field in ipairs(redis.call('HKEYS', KEYS[2])) do numbers[#numbers + 1] = tonumber(field) end
  table.sort(numbers)
  local cut = #numbers - keep
  local kept = {}
  for i = cut + 1, #numbers do
    kept[string.match(redis.call('HGET', KEYS[2], numbers[i]), '"sha256":"(%x+)"')] = true
  end
  for i = 1, cut do
    local sha = string.match(redis.call('HGET', KEYS[2], numbers[i]), '"sha256":"(%x+)"')
    redis.call('HDEL', KEYS[2], numbers[i])
    -- versions with the same bytes share one blob: free it only when no kept version names it
    if sha and not kept[sha] then redis.call('HDEL', KEYS[3], sha) end
    pruned = pruned + 1
  end
end
return {1, record, pruned}
"""

# KEYS: task, versions, blobs. ARGV: version ('' = current), '1' to return the bytes too.
GET = """
local current = redis.call('HGET', KEYS[1], 'current')
if not current then return {0} end
local v = ARGV[1]
if v == '' then v = current end
local record = redis.call('HGET', KEYS[2], v)
if not record then return {-1} end
if ARGV[2] ~= '1' then return {1, record} end
local blob = redis.call('HGET', KEYS[3], string.match(record, '"sha256":"(%x+)"'))
if not blob then return {-2} end
return {1, record, blob}
"""

# KEYS: task, versions.
HISTORY = """
if redis.call('HEXISTS', KEYS[1], 'current') == 0 then return {0} end
return {1, redis.call('HVALS', KEYS[2])}
"""

# KEYS: task, versions. Reply: nil for a task without a current version, else
# [current, latest, created_at, updated_at, current record, number of versions] (one task, read atomically).
SUMMARY = """
local h = redis.call('HMGET', KEYS[1], 'current', 'latest', 'created_at', 'updated_at')
if not h[1] then return false end
return {h[1], h[2], h[3], h[4], redis.call('HGET', KEYS[2], h[1]), redis.call('HLEN', KEYS[2])}
"""

# KEYS: task, versions. One task's detail, read atomically in one call: {0} for no task, else
# {1, current, latest, created_at, updated_at, current record, every version record} (O(versions kept)).
DETAIL = """
local h = redis.call('HMGET', KEYS[1], 'current', 'latest', 'created_at', 'updated_at')
if not h[1] then return {0} end
return {1, h[1], h[2], h[3], h[4], redis.call('HGET', KEYS[2], h[1]), redis.call('HVALS', KEYS[2])}
"""

# KEYS: task, versions. ARGV: version, now, task, channel.
ROLLBACK = """
if redis.call('HEXISTS', KEYS[1], 'current') == 0 then return {0} end
local record = redis.call('HGET', KEYS[2], ARGV[1])
if not record then return {-1} end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[2], 'current', ARGV[1])
local sha = string.match(record, '"sha256":"(%x+)"')
redis.call('PUBLISH', ARGV[4], cjson.encode({event='rollback', task=ARGV[3], version=tonumber(ARGV[1]), sha256=sha}))
return {1, record}
"""

# KEYS: task, versions, blobs, jobs. ARGV: task, channel. Reply: {1, versions removed, blobs freed}.
DELETE = """
local current = redis.call('HGET', KEYS[1], 'current')
if not current then return {0} end
local current_sha = string.match(redis.call('HGET', KEYS[2], current) or '', '"sha256":"(%x+)"')
local versions = redis.call('HLEN', KEYS[2])
local freed = redis.call('HLEN', KEYS[3])
-- the job -> version map goes too: it names versions that no longer exist
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
-- 'latest' stays, so a re-created task never reuses a version number: (task, version) names one artifact forever
redis.call('HDEL', KEYS[1], 'current', 'created_at', 'updated_at')
redis.call('PUBLISH', ARGV[2], cjson.encode({event='delete', task=ARGV[1], version=tonumber(current),
                                             sha256=current_sha or cjson.null}))
return {1, versions, freed}
"""

# KEYS: clips index, clip counts. ARGV: sha256, record JSON, "<split>/<label>".
# Reply: {1, record} when added, {0, existing record} when the clip was already stored.
ADD_CLIP = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return {0, redis.call('HGET', KEYS[1], ARGV[1])}
end
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
return {1, ARGV[2]}
"""

# KEYS: clips index, clip counts. Reply: number of clips removed.
DELETE_CLIPS = """
local n = redis.call('HLEN', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
return n
"""

ADAPTER_SCRIPTS = {
    "publish": PUBLISH,
    "get": GET,
    "history": HISTORY,
    "summary": SUMMARY,
    "detail": DETAIL,
    "rollback": ROLLBACK,
    "delete": DELETE,
}
