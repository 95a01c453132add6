"""The Lua scripts of the Redis presence registry (infra/presence_redis.py), each run atomically by Redis.

They build keys from the prefix and ids: on a Redis Cluster the registry's prefix
has a hash tag, so all its keys lie in one slot and the scripts run unchanged.
"""

from __future__ import annotations

# Atomically: sets this node's count of one user's sockets (0 removes it), stores last seen and,
# when that turned the user online or offline, counts one transition (however many nodes write at once).
# KEYS: conn:<user>, node-users:<node>, seen:<user>, pseq:<user>, nodes
# ARGV: node, user, count, now, last-seen TTL. Returns the user's new transition number, 0 if none.
SET_COUNT = """
local before = redis.call('EXISTS', KEYS[1])
if tonumber(ARGV[3]) > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  if redis.call('HEXISTS', KEYS[5], ARGV[1]) == 0 then redis.call('HSET', KEYS[5], ARGV[1], ARGV[4]) end
else
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[2])
end
redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[5])
if redis.call('EXISTS', KEYS[1]) == before then return 0 end
local seq = redis.call('INCR', KEYS[4])
redis.call('EXPIRE', KEYS[4], ARGV[5])
return seq
"""

# Atomically: tells whether this node's liveness key still existed, sets it again and records the
# refresh time, so a sweep between the check and the refresh cannot go unnoticed; and which server
# process answered (its run id), so a failover or restart, which may have lost recent writes, shows.
# KEYS: node:<node>, nodes. ARGV: node, TTL ms, now.
# Returns {alive, run id}: alive 0 when the key had expired (the node's entries may have been swept).
REFRESH = """
local alive = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return {alive, string.match(redis.call('INFO', 'server'), 'run_id:(%w+)') or ''}
"""

# Atomically: makes this node's entries its whole local state (absolute counts), removing entries it
# no longer has, and counts one transition per user it turned online or offline.
# KEYS: node:<node>, nodes, node-users:<node>. ARGV: node, prefix, now, last-seen TTL, TTL ms, user, count, ...
# Returns {user, online (0/1), transition number} per transition.
REGISTER = """
local node, prefix, now, seen_ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
redis.call('SET', KEYS[1], '1', 'PX', ARGV[5])
redis.call('HSET', KEYS[2], node, now)
local want = {}
for i = 6, #ARGV, 2 do want[ARGV[i]] = ARGV[i + 1] end
local changes = {}
local function changed(user, online)
  local seq = redis.call('INCR', prefix .. 'pseq:' .. user)
  redis.call('EXPIRE', prefix .. 'pseq:' .. user, seen_ttl)
  redis.call('SET', prefix .. 'seen:' .. user, now, 'EX', seen_ttl)
  changes[#changes + 1] = {user, online, seq}
end
for _, user in ipairs(redis.call('HKEYS', KEYS[3])) do
  if not want[user] then
    local conn = prefix .. 'conn:' .. user
    redis.call('HDEL', conn, node)
    redis.call('HDEL', KEYS[3], user)
    if redis.call('EXISTS', conn) == 0 then changed(user, 0) end
  end
end
for user, count in pairs(want) do
  local conn = prefix .. 'conn:' .. user
  local before = redis.call('EXISTS', conn)
  redis.call('HSET', conn, node, count)
  redis.call('HSET', KEYS[3], user, count)
  if before == 0 then changed(user, 1) end
end
return changes
"""

# Atomically: lists the registered nodes whose liveness key has expired. KEYS: nodes. ARGV: prefix.
DEAD_NODES = """
local dead = {}
for _, node in ipairs(redis.call('HKEYS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. 'node:' .. node) == 0 then dead[#dead + 1] = node end
end
return dead
"""

# Atomically: removes a node's entries, a dead one's (unless it came back meanwhile) or, forced, this
# node's at shutdown, and counts one transition per user left offline, so concurrent sweepers
# announce each transition once.
# KEYS: node:<node>, nodes, node-users:<node>. ARGV: node, prefix, last-seen TTL, now, forced (1/0).
# Returns {user, transition number, last seen} per user left offline.
REMOVE_NODE = """
local node, prefix, seen_ttl = ARGV[1], ARGV[2], ARGV[3]
if ARGV[5] ~= '1' and redis.call('EXISTS', KEYS[1]) == 1 then return {} end
local last = ARGV[4]
if ARGV[5] ~= '1' then last = redis.call('HGET', KEYS[2], node) or ARGV[4] end
local changes = {}
for _, user in ipairs(redis.call('HKEYS', KEYS[3])) do
  local conn = prefix .. 'conn:' .. user
  redis.call('HDEL', conn, node)
  if redis.call('EXISTS', conn) == 0 then
    local seen_key = prefix .. 'seen:' .. user
    local seen = redis.call('GET', seen_key)
    if not seen or tonumber(seen) < tonumber(last) then
      seen = last
      redis.call('SET', seen_key, seen, 'EX', seen_ttl)
    end
    local seq = redis.call('INCR', prefix .. 'pseq:' .. user)
    redis.call('EXPIRE', prefix .. 'pseq:' .. user, seen_ttl)
    changes[#changes + 1] = {user, seq, seen}
  end
end
redis.call('DEL', KEYS[3])
redis.call('HDEL', KEYS[2], node)
if ARGV[5] == '1' then redis.call('DEL', KEYS[1]) end
return changes
"""

# Atomically: reads many users' online state, last seen and transition number at one instant, so no
# transition falls between the reads. KEYS: conn, seen, pseq of each user.
STATES = """
local out = {}
for i = 1, #KEYS, 3 do
  out[#out + 1] = redis.call('EXISTS', KEYS[i])
  out[#out + 1] = redis.call('GET', KEYS[i + 1])
  out[#out + 1] = redis.call('GET', KEYS[i + 2])
end
return out
"""

# Atomically: which of these users are online, in one command however many. KEYS: conn of each user.
ONLINE = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('EXISTS', key) end
return out
"""
