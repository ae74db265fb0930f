"""Lua scripts of the adapter and clip stores.

Each multi-key operation is one script, so it is atomic on the Redis server and one round trip: a reader never
sees a pointer whose record or blob is missing, and the sync and async stores only differ in how they await it.
Key prefixes come in through ARGV (from ``vpetl.store.keys``) where a script derives keys, so key names are spelled
in one place. Scripts find a record's sha256 with a pattern match instead of decoding the caller's metadata: the
store writes ``version``, ``task``, ``sha256`` first, and a task name cannot contain a quote, so the first
``"sha256":"…"`` is always the store's own.

Scripts that derive blob keys from records (get with blob, list, delete) touch keys they do not declare: fine on
a standalone, managed or Sentinel Redis, not on Redis Cluster.
"""

from __future__ import annotations

# Status codes in the first element of a script reply.
OK = 1
NO_TASK = 0  # also: "blob missing" for PUBLISH (the caller re-writes the blob and retries)
NO_VERSION = -1
NO_BLOB = -2

# KEYS: task, versions, tasks, blob, blobrefs. ARGV: task, record body (JSON without version), now, sha256, channel.
PUBLISH = """
if redis.call('EXISTS', KEYS[4]) == 0 then return {0} end
-- the blob was written with a TTL so an abandoned publish cannot leave an orphan; a referenced blob lives forever
redis.call('PERSIST', KEYS[4])
local v = redis.call('HINCRBY', KEYS[1], 'latest', 1)
local record = '{"version":' .. v .. ',' .. string.sub(ARGV[2], 2)
redis.call('HSET', KEYS[2], v, record)
redis.call('SADD', KEYS[5], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('HSETNX', KEYS[1], 'created_at', ARGV[3])
-- the pointer moves last (the script is atomic anyway; this keeps the order right if it ever is not)
redis.call('HSET', KEYS[1], 'updated_at', ARGV[3], 'current', v)
redis.call('PUBLISH', ARGV[5], cjson.encode({event='publish', task=ARGV[1], version=v, sha256=ARGV[4]}))
return {1, record}
"""

# KEYS: task, versions. ARGV: version ('' = current), '1' to return the blob too, blob prefix.
GET = """
local current = redis.call('HGET', KEYS[1], 'current')
if not current then return {0} end
local v = ARGV[1]
if v == '' then v = current end
local record = redis.call('HGET', KEYS[2], v)
if not record then return {-1} end
if ARGV[2] ~= '1' then return {1, record} end
local blob = redis.call('GET', ARGV[3] .. string.match(record, '"sha256":"(%x+)"'))
if not blob then return {-2} end
return {1, record, blob}
"""

# KEYS: task keys. Reply: one current version (or nil) per key.
GET_POINTERS = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HGET', key, 'current') end
return out
"""

# KEYS: task, versions.
HISTORY = """
if redis.call('HEXISTS', KEYS[1], 'current') == 0 then return {0} end
return {1, redis.call('HVALS', KEYS[2])}
"""

# KEYS: tasks set. ARGV: task prefix, versions prefix.
# Reply: per task [task, current, latest, created_at, updated_at, current record, number of versions].
LIST_TASKS = """
local out = {}
for _, t in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local h = redis.call('HMGET', ARGV[1] .. t, 'current', 'latest', 'created_at', 'updated_at')
  if h[1] then
    local record = redis.call('HGET', ARGV[2] .. t, h[1])
    out[#out + 1] = {t, h[1], h[2], h[3], h[4], record, redis.call('HLEN', ARGV[2] .. t)}
  end
end
return out
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

# KEYS: task, versions, tasks. ARGV: task, channel, blob prefix, blobrefs prefix.
# Reply: {1, versions removed, blobs freed}.
DELETE = """
local current = redis.call('HGET', KEYS[1], 'current')
if not current then return {0} end
local current_sha = string.match(redis.call('HGET', KEYS[2], current) or '', '"sha256":"(%x+)"')
local records = redis.call('HVALS', KEYS[2])
local seen, freed = {}, 0
for _, record in ipairs(records) do
  local sha = string.match(record, '"sha256":"(%x+)"')
  if sha and not seen[sha] then
    seen[sha] = true
    redis.call('SREM', ARGV[4] .. sha, ARGV[1])
    if redis.call('SCARD', ARGV[4] .. sha) == 0 then
      redis.call('DEL', ARGV[3] .. sha)
      freed = freed + 1
    end
  end
end
redis.call('DEL', KEYS[2])
-- 'latest' stays, so a re-created task never reuses a version number: (task, version) names one artifact forever
redis.call('HDEL', KEYS[1], 'current', 'created_at', 'updated_at')
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('PUBLISH', ARGV[2], cjson.encode({event='delete', task=ARGV[1], version=tonumber(current),
                                             sha256=current_sha or cjson.null}))
return {1, #records, freed}
"""

# KEYS: clips index, clip counts, clip tasks. ARGV: sha256, record JSON, "<split>/<label>", task.
# Reply: {1, record} when added, {0, existing record} when the clip was already stored.
ADD_CLIP = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return {0, redis.call('HGET', KEYS[1], ARGV[1])}
end
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
redis.call('SADD', KEYS[3], ARGV[4])
return {1, ARGV[2]}
"""

# KEYS: clips index, clip counts, clip tasks. ARGV: task. Reply: number of clips removed.
DELETE_CLIPS = """
local n = redis.call('HLEN', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
return n
"""

ADAPTER_SCRIPTS = {
    "publish": PUBLISH,
    "get": GET,
    "get_pointers": GET_POINTERS,
    "history": HISTORY,
    "list_tasks": LIST_TASKS,
    "rollback": ROLLBACK,
    "delete": DELETE,
}
