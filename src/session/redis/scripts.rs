//! The Lua scripts that change sessions, and the key layout they work on.
//!
//! Reads need no script: a session's hash keeps its packed form (`p`), which every change
//! rewrites. Every script touches the keys of one session id only, passed as KEYS, and the keys of one
//! id share a hash tag (`{ID}`), so each script runs on one node of a Cluster too. A script
//! that finds an alias instead of a session answers `{2, TARGET}` and the store runs it again
//! on the target (one hop), since the target may live on another node.

/// The format of the session hashes this gateway writes (`f`; a hash without one is of
/// format 1, written before `f` existed). A gateway reads formats up to one above its own, so
/// that two adjacent versions share one Redis during a rolling upgrade: the rule for a next
/// format is that it may add fields, never change or drop one that this one reads. A hash of
/// a format further ahead is refused (as corrupt: the request fails closed), never misread.
pub(super) const FORMAT: u64 = 1;

/// `PREFIX s:{ID}` — the hash of a session: `k` (its stable key), `c` (created, Unix ms),
/// `l` (last used, Unix ms), `v` (version, counts updates), `f` (its format, see [`FORMAT`]),
/// `a:NAME` per attribute, and `p` (key and attributes packed for the read path). It
/// expires (`PEXPIRE`) after the idle timeout since its last write; the absolute timeout is
/// judged from `c`. A regenerate leaves the old id's hash as it was, read-only, with `r` (the
/// id it was renamed to) and the grace as its expiry: no script changes a hash with `r`.
pub(super) fn session_key(prefix: &str, id: &str) -> String {
    format!("{prefix}s:{{{id}}}")
}

/// `PREFIX alive:ID` — one gateway store's marker, set when it first reaches Redis, daily,
/// and after each outage: a Redis found without it after an outage lost its data (restarted
/// empty, flushed), and the writes queued meanwhile restore their sessions rather than find
/// them ended.
pub(super) fn marker_key(prefix: &str, id: &str) -> String {
    format!("{prefix}alive:{id}")
}

/// `PREFIX d:{ID}` — a deleted session's tombstone, for the idle timeout (see [`DELETE`]).
pub(super) fn tombstone_key(prefix: &str, id: &str) -> String {
    format!("{prefix}d:{{{id}}}")
}

/// `PREFIX m:{ID}` — another id of a session (a sibling host's alias): the session's own id,
/// with its own expiry.
pub(super) fn alias_key(prefix: &str, id: &str) -> String {
    format!("{prefix}m:{{{id}}}")
}

/// `PREFIX h:{CODE}` — a one-time handoff code: the id of the session it stands for, with the
/// code's expiry; taken with `GETDEL`.
pub(super) fn code_key(prefix: &str, code: &str) -> String {
    format!("{prefix}h:{{{code}}}")
}

/// The id in a session hash's key, if it is one.
pub(super) fn id_of<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    key.strip_prefix(prefix)?
        .strip_prefix("s:{")?
        .strip_suffix('}')
}

/// The answer of a script run on an alias: run it again on the session it names. And the
/// session's key and attributes packed as [`Session::packed`](crate::session::Session::packed)
/// lays them out (key length u8, key, then per attribute by name: name length u8, name,
/// value length u32 LE, value), kept in field `p` so that a read is one `HMGET`, no script.
const HELPERS: &str = r"
local function follow()
  local to = redis.call('GET', KEYS[2])
  if to then return {2, to} end
  return false
end
local function pack(k, attrs)
  local names = {}
  for n, _ in pairs(attrs) do
    if #n <= 255 then table.insert(names, n) end
  end
  table.sort(names)
  local out = {string.char(#k), k}
  for _, n in ipairs(names) do
    local v = attrs[n]
    table.insert(out, string.char(#n) .. n .. struct.pack('<I4', #v))
    table.insert(out, v)
  end
  return table.concat(out)
end
";

/// The read path's one command, no script (a script costs Redis several times a plain read):
/// `HMGET p c l r f` of the session's hash (`r`: the id a retired hash was renamed to; `f`:
/// its format). A session without `p`, or an id that is an alias, goes through [`LOAD`]
/// instead.
pub(super) const READ_FIELDS: [&str; 5] = ["p", "c", "l", "r", "f"];

/// KEYS: session. ARGV: now, idle ms. Notes a use (last use, expiry) of a session that
/// exists; the read path runs it at most once per touch interval. A retired hash keeps its
/// grace as its expiry.
pub(super) const TOUCH: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'r') == 1 then return 1 end
local last = tonumber(redis.call('HGET', KEYS[1], 'l') or '0')
if tonumber(ARGV[1]) > last then redis.call('HSET', KEYS[1], 'l', ARGV[1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

/// KEYS: session, alias. ARGV: now, idle ms, touch ms.
/// Returns {1, TTL ms, created, last used, PACKED, RENAMED TO} (see `pack`; the last is ''
/// but for a retired hash, which is read and never touched). A use is written back (last
/// use, expiry) only when the last one is older than `touch`, or less than half the idle
/// timeout is left.
pub(super) const LOAD: &str = r"
local key = KEYS[1]
local h = redis.call('HGETALL', key)
if #h == 0 then return follow() end
local now, idle, touch = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local k, created, last, attrs, renamed = '', 0, 0, {}, ''
for i = 1, #h, 2 do
  local f = h[i]
  if f == 'k' then k = h[i + 1]
  elseif f == 'c' then created = tonumber(h[i + 1])
  elseif f == 'l' then last = tonumber(h[i + 1])
  elseif f == 'r' then renamed = h[i + 1]
  elseif string.sub(f, 1, 2) == 'a:' then attrs[string.sub(f, 3)] = h[i + 1] end
end
local ttl = redis.call('PTTL', key)
if renamed ~= '' then return {1, ttl, created, last, pack(k, attrs), renamed} end
if now - last >= touch or ttl < idle / 2 then
  if now > last then
    redis.call('HSET', key, 'l', now)
    last = now
  end
  redis.call('PEXPIRE', key, idle)
  ttl = idle
end
local packed = pack(k, attrs)
redis.call('HSET', key, 'p', packed)
return {1, ttl, created, last, packed, ''}
";

/// KEYS: session, alias. ARGV: channel, id, now, idle ms, create key ('' for none), max
/// attributes, max value bytes, max session bytes, then (op 'S'/'U', name, value) per change.
/// Returns {1, created, {rejected name, reason, ...}, created ms, last used ms, PACKED}. A
/// change is announced on the channel (other gateways drop their near-cache copy). No session
/// is created under an alias; a retired hash changes nothing (false).
pub(super) const UPDATE: &str = r"
local key = KEYS[1]
local now, idle, create = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local max_attrs, max_value, max_bytes = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local created = 0
if redis.call('EXISTS', key) == 0 then
  local f = follow()
  if f or create == '' then return f end
  redis.call('HSET', key, 'k', create, 'c', now, 'l', now, 'v', 0, 'f', 1)
  created = 1
elseif redis.call('HEXISTS', key, 'r') == 1 then
  return false
end
local h = redis.call('HGETALL', key)
local attrs, count, size = {}, 0, 0
for i = 1, #h, 2 do
  if string.sub(h[i], 1, 2) == 'a:' then
    local n = string.sub(h[i], 3)
    attrs[n] = h[i + 1]
    count = count + 1
    size = size + #n + #h[i + 1]
  end
end
local rejected = {}
for i = 9, #ARGV, 3 do
  local op, name, value = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local old = attrs[name]
  if op == 'U' then
    if old then
      size = size - #name - #old
      count = count - 1
      attrs[name] = nil
      redis.call('HDEL', key, 'a:' .. name)
    end
  else
    local new_size = size + #name + #value
    if old then new_size = new_size - #name - #old end
    local reason = nil
    if #value > max_value then reason = 'max_value_bytes'
    elseif (not old) and count >= max_attrs then reason = 'max_attributes'
    elseif new_size > max_bytes then reason = 'max_session_bytes' end
    if reason then
      table.insert(rejected, name)
      table.insert(rejected, reason)
    else
      if not old then count = count + 1 end
      attrs[name] = value
      size = new_size
      redis.call('HSET', key, 'a:' .. name, value)
    end
  end
end
local last = tonumber(redis.call('HGET', key, 'l') or '0')
if now > last then
  redis.call('HSET', key, 'l', now)
  last = now
end
local packed = pack(redis.call('HGET', key, 'k'), attrs)
redis.call('HSET', key, 'p', packed)
redis.call('HINCRBY', key, 'v', 1)
redis.call('PEXPIRE', key, idle)
if #ARGV > 8 then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
return {1, created, rejected, redis.call('HGET', key, 'c'), last, packed}
";

/// KEYS: session, alias, tombstone. ARGV: channel, id, idle ms. Deletes both and leaves a
/// tombstone for the idle timeout (so no gateway restores the session from its copy after
/// Redis lost its data, see [`RESTORE`]); returns the id the alias named, so the store
/// deletes that session too. Run twice (a retry after a lost answer), it returns that id
/// again, from the tombstone.
pub(super) const DELETE: &str = r"
local to = redis.call('GET', KEYS[2])
if not to then
  local t = redis.call('GET', KEYS[3])
  if t and t ~= '' then to = t end
end
if redis.call('DEL', KEYS[1]) == 1 then redis.call('PUBLISH', ARGV[1], ARGV[2]) end
redis.call('DEL', KEYS[2])
-- pcall: a full Redis (noeviction) must not fail the logout itself over its tombstone.
redis.pcall('SET', KEYS[3], to or '', 'PX', math.max(1, tonumber(ARGV[3])))
return to
";

/// KEYS: session, alias, new session (same node: standalone or Sentinel). ARGV: channel, id,
/// new id, grace ms. The session is copied to the new id at once; the old hash stays, as it
/// was, retired (`r`: the new id) for `grace`, then expires. Returns {1} when moved, {0}
/// when there is nothing to move (or only a retired hash).
pub(super) const RENAME: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return follow() or {0} end
if redis.call('HEXISTS', KEYS[1], 'r') == 1 then return {0} end
redis.call('COPY', KEYS[1], KEYS[3], 'REPLACE')
redis.call('PUBLISH', ARGV[1], ARGV[2])
local grace = tonumber(ARGV[4])
if grace > 0 then
  redis.call('HSET', KEYS[1], 'r', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], grace)
else
  redis.call('DEL', KEYS[1])
end
redis.call('DEL', KEYS[2])
return {1}
";

/// A rename across Cluster nodes, step 1. KEYS: session, alias. Returns {1, TTL ms, HGETALL}
/// (`v` in it is the version step 3 checks); {0} for nothing, or a retired hash.
pub(super) const SNAPSHOT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return follow() or {0} end
if redis.call('HEXISTS', KEYS[1], 'r') == 1 then return {0} end
return {1, redis.call('PTTL', KEYS[1]), redis.call('HGETALL', KEYS[1])}
";

/// Step 2. KEYS: new session. ARGV: TTL ms, then field, value, ... The copy.
pub(super) const WRITE_COPY: &str = r"
redis.call('DEL', KEYS[1])
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', KEYS[1], math.max(1, tonumber(ARGV[1])))
return 1
";

/// KEYS: session, tombstone. ARGV: channel, id, ttl ms, then field, value, ... A session
/// written back into a Redis that lost it, from a gateway's copy; nothing is written over a
/// session that is there, nor over one ended since (1 written, 0 not).
pub(super) const RESTORE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', KEYS[1], math.max(1, tonumber(ARGV[3])))
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
";

/// Step 3. KEYS: session, alias. ARGV: channel, id, new id, grace ms, version. Retires the
/// old session (as [`RENAME`] does) if it is still at the copied version: 1 done, 0 changed
/// since (copy again), -1 gone (deleted, or retired, meanwhile).
pub(super) const SEAL: &str = r"
local v = redis.call('HGET', KEYS[1], 'v')
local r = redis.call('HGET', KEYS[1], 'r')
-- Sealed already, to this very id: a run the Cluster client repeated after a lost answer.
if r == ARGV[3] then return 1 end
if not v or r then return -1 end
if v ~= ARGV[5] then return 0 end
redis.call('PUBLISH', ARGV[1], ARGV[2])
local grace = tonumber(ARGV[4])
if grace > 0 then
  redis.call('HSET', KEYS[1], 'r', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], grace)
else
  redis.call('DEL', KEYS[1])
end
redis.call('DEL', KEYS[2])
return 1
";

/// KEYS: session, alias. Returns {1} if a live session is there, {2, TARGET} if an alias,
/// false for nothing or a retired hash (which nothing may alias, nor mint a code for).
pub(super) const PROBE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HEXISTS', KEYS[1], 'r') == 1 then return false end
  return {1}
end
return follow()
";

/// A script body with its helper.
pub(super) fn script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{HELPERS}\n{body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keys_of_one_session_share_a_hash_tag_and_the_id_comes_back() {
        let s = session_key("sg:", "ab12");
        assert_eq!(s, "sg:s:{ab12}");
        assert_eq!(alias_key("sg:", "ab12"), "sg:m:{ab12}");
        assert_eq!(id_of("sg:", &s), Some("ab12"));
        assert_eq!(id_of("sg:", "sg:m:{ab12}"), None);
        assert_eq!(id_of("other:", &s), None);
    }
}

#[cfg(test)]
mod format_tests {
    #[test]
    fn a_new_session_hash_carries_this_gateways_format() {
        assert!(super::UPDATE.contains(&format!("'f', {}", super::FORMAT)));
    }
}
