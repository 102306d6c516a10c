//! The Redis store: one Lua script per operation, so each is one round trip and atomic.
//!
//! Scripts (not MULTI) because the checks (does the session still exist, is it still the
//! incarnation this server opened, is the cached version current) must run on the server in
//! the same step as the write. Debian 12's Redis 7.0 has no `SET IFEQ`; `PEXPIRETIME` (7.0)
//! gives the data key's absolute expiry, which sessfs records beside the metadata to notice a
//! phpredis write (it moves the expiry and nothing else).
//!
//! Every key a script touches is named in KEYS and shares one hash slot (see `keys`), so the
//! same scripts serve Redis Cluster later.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionInfo, ErrorKind, RedisError, Script, Value};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio_stream::StreamExt;

use super::{
    Acquired, Asker, Claim, Created, Event, Fence, Loaded, LockMode, Meta, RawStat, Record,
    Removed, Renewed, Result, Stat, Store, StoreError, StoreOptions, Written, fresh_token,
    token_arg,
};
use crate::keys::{Keys, SessionKeys, SessionName};

/// Returns the state of KEYS[1]/KEYS[2] as {strlen, expiry, v, i, mode, uid, gid, mt, ct, x, n}.
const STAT_FN: &str = r#"
local function st(x)
  local m = redis.call('HMGET', KEYS[2], 'v', 'i', 'mode', 'uid', 'gid', 'mt', 'ct', 'x', 'n')
  return {redis.call('STRLEN', KEYS[1]), x, m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8], m[9]}
end
"#;

/// Redis' own clock, in ms: lock deadlines are compared on the server, so the servers' clocks
/// never matter.
const NOW_FN: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), tonumber(t[1]) * 1000000 + tonumber(t[2])
end
"#;

/// The content check shared by LOAD and LOCK_ACQUIRE: false when missing, {stat} when `known`
/// is current, else {stat, content}.
const LOAD_FN: &str = r#"
local function load(known)
  local x = redis.call('PEXPIRETIME', KEYS[1])
  if x == -2 then return false end
  local s = st(x)
  if known ~= '' and s[3] == known and s[10] and tonumber(s[10]) == x
     and s[11] and tonumber(s[11]) == s[1] then
    return {s}
  end
  return {s, redis.call('GET', KEYS[1])}
end
"#;

/// True when a write made under claim (owner, token) must be refused: that claim no longer
/// holds KEYS[3] (released, or its lease ran out). An empty owner means no lock is claimed.
const FENCE_FN: &str = r#"
local function fenced(owner, token)
  if owner == '' then return false end
  local v = redis.call('HGET', KEYS[3], 'h:' .. owner)
  if not v then return true end
  local d, tok = string.match(v, '^%a:(%d+):(.+)$')
  local now = now_ms()
  return tok ~= token or tonumber(d) < now
end
"#;

/// Extends KEYS[3]'s life to at least `deadline` (ms): the key must outlive every entry in it.
const KEEP_FN: &str = r#"
local function keep_until(deadline)
  local cur = redis.call('PEXPIRETIME', KEYS[3])
  if cur >= 0 and cur < deadline + 1000 then redis.call('PEXPIREAT', KEYS[3], deadline + 1000) end
  if cur == -1 then redis.call('PEXPIREAT', KEYS[3], deadline + 1000) end
end
"#;

/// Nil when no other server holds KEYS[3] exclusively (a lease: it may serve the session from
/// memory; with `only_write_back`, a lease whose writes may still be on their way, `b:<owner>`). Otherwise asks each such holder to let go, queues `me` as an opener (`o:<me>` =
/// arrival_us:s:deadline, so a release wakes it and no server takes the lock before it), and
/// returns the ms until the soonest of those leases runs out. Once nothing stands in the way,
/// the opener's place is dropped and the servers queued for the lock are woken.
const RECALL_FN: &str = r#"
local function forget_opener(me)
  if redis.call('HDEL', KEYS[3], 'o:' .. me) == 0 then return end
  local flat = redis.call('HGETALL', KEYS[3])
  for i = 1, #flat, 2 do
    if string.sub(flat[i], 1, 2) == 'w:' then
      redis.call('PUBLISH', 'sessfs:' .. string.sub(flat[i], 3), 'r ' .. KEYS[1])
    end
  end
end

local function recall(me, lease, only_write_back, retry)
  local flat = redis.call('HGETALL', KEYS[3])
  if #flat == 0 then return nil end
  if only_write_back and retry then
    -- The holders answered (see FLUSHED) after this request asked: it loads now. A first
    -- ask never takes an earlier request's answer: it is queued afresh below ('s').
    local o = redis.call('HGET', KEYS[3], 'o:' .. me)
    if o and string.match(o, '^%d+:f:') then
      forget_opener(me)
      return nil
    end
  end
  local ask = 'w '
  if only_write_back then ask = 'f ' end
  local now, now_us = now_ms()
  local until_ms = nil
  local mine = nil
  for i = 1, #flat, 2 do
    local f, v = flat[i], flat[i + 1]
    local kind, who = string.sub(f, 1, 2), string.sub(f, 3)
    if kind == 'h:' and who ~= me then
      local m, d = string.match(v, '^(%a):(%d+):')
      d = tonumber(d)
      if m == 'e' and d and d >= now
         and ((not only_write_back) or redis.call('HEXISTS', KEYS[3], 'b:' .. who) == 1) then
        if (not until_ms) or d < until_ms then until_ms = d end
        redis.call('PUBLISH', 'sessfs:' .. who, ask .. KEYS[1])
      end
    elseif kind == 'o:' and who == me then
      mine = string.match(v, '^(%d+):')
    end
  end
  if not until_ms then
    if mine then forget_opener(me) end
    return nil
  end
  local deadline = now + 2 * lease
  redis.call('HSET', KEYS[3], 'o:' .. me, (mine or string.format('%.0f', now_us)) .. ':s:' .. deadline)
  keep_until(deadline)
  return until_ms - now
end
"#;

/// A session held in write-back mode (a live `b:` holder) reports no version: its stored
/// content may be older than what the holder acknowledged, so no copy is validated by a stat
/// (an open then loads, and the load asks the holder first).
const STAT: &str = r#"
local x = redis.call('PEXPIRETIME', KEYS[1])
if x == -2 then return false end
local s = st(x)
local now = now_ms()
local flat = redis.call('HGETALL', KEYS[3])
for i = 1, #flat, 2 do
  if string.sub(flat[i], 1, 2) == 'b:' then
    local v = redis.call('HGET', KEYS[3], 'h:' .. string.sub(flat[i], 3))
    local d = v and tonumber(string.match(v, '^e:(%d+):'))
    if d and d >= now then s[3] = false end
  end
end
return s
"#;

/// ARGV[1]: the version the caller has, or ''; ARGV[2], ARGV[3]: asker and its lease (ms);
/// ARGV[4]: '1' when asking again after a recall. Content is sent unless that version is current
/// and the session was last written by sessfs (recorded expiry and length still match). A
/// write-back holder is recalled first.
const LOAD: &str = r#"
local r = recall(ARGV[2], tonumber(ARGV[3]), true, ARGV[4] == '1')
if r then return {'recall', r} end
return load(ARGV[1])
"#;

/// Writes metadata ARGV[4..8] with version v and incarnation i, expiring with KEYS[1].
const PUT_META_FN: &str = r#"
local function put_meta(v, i)
  local x = redis.call('PEXPIRETIME', KEYS[1])
  redis.call('HSET', KEYS[2], 'v', v, 'i', i, 'mode', ARGV[4], 'uid', ARGV[5], 'gid', ARGV[6],
    'mt', ARGV[7], 'ct', ARGV[8], 'x', x, 'n', redis.call('STRLEN', KEYS[1]))
  redis.call('PEXPIREAT', KEYS[2], x)
  return st(x)
end
"#;

/// ARGV: exclusive ('1'/''), version, incarnation, mode, uid, gid, mt, ct, ttl_ms, asker,
/// asker's lease (ms), '1' when asking again after a recall.
const CREATE: &str = r#"
local x = redis.call('PEXPIRETIME', KEYS[1])
if x ~= -2 then
  if ARGV[1] == '1' then return 0 end
  local r = recall(ARGV[10], tonumber(ARGV[11]), true, ARGV[12] == '1')
  if r then return {'recall', r} end
  return {st(x), redis.call('GET', KEYS[1])}
end
redis.call('SET', KEYS[1], '', 'PX', ARGV[9])
redis.call('DEL', KEYS[2])
return {put_meta(ARGV[2], ARGV[3])}
"#;

/// ARGV: expected incarnation or '', version, incarnation if none yet, mode, uid, gid, mt, ct,
/// ttl_ms, fence owner or '', fence token, asker, asker's lease (ms), data. Returns -1 when
/// fenced. A write under the writer's own lock needs no recall: nobody else holds one.
const WRITE: &str = r#"
if fenced(ARGV[10], ARGV[11]) then return -1 end
if ARGV[10] == '' then
  local r = recall(ARGV[12], tonumber(ARGV[13]))
  if r then return {'recall', r} end
end
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local i = redis.call('HGET', KEYS[2], 'i')
if ARGV[1] ~= '' then
  if i ~= ARGV[1] then return false end
elseif not i then
  i = ARGV[3]
end
redis.call('SET', KEYS[1], ARGV[14], 'PX', ARGV[9])
return put_meta(ARGV[2], i)
"#;

/// ARGV as WRITE without data; ARGV[2] is the version to record if the content's version is
/// unknown (a foreign write), since no cache can hold that content under any version.
const UPDATE_META: &str = r#"
if fenced(ARGV[10], ARGV[11]) then return -1 end
if ARGV[10] == '' then
  local r = recall(ARGV[12], tonumber(ARGV[13]))
  if r then return {'recall', r} end
end
local x = redis.call('PEXPIRETIME', KEYS[1])
if x == -2 then return false end
local m = redis.call('HMGET', KEYS[2], 'v', 'i', 'x', 'n')
local i = m[2]
if ARGV[1] ~= '' then
  if i ~= ARGV[1] then return false end
elseif not i then
  i = ARGV[3]
end
local v = m[1]
if (not v) or (not m[3]) or tonumber(m[3]) ~= x or (not m[4])
   or tonumber(m[4]) ~= redis.call('STRLEN', KEYS[1]) then
  v = ARGV[2]
end
redis.call('PEXPIRE', KEYS[1], ARGV[9])
return put_meta(v, i)
"#;

/// KEYS: data, meta, lock. ARGV: owner, token, mode ('e'/'s'), lease_ms, known version, queue
/// ('1' to wait in line when denied), write-back ('1': `b:<owner>` marks the holding, see
/// recall). The lock hash holds `h:<owner>` = mode:deadline:token for
/// each holding server and `w:<owner>` = arrival_us:mode:deadline for each queued one; entries
/// past their deadline are dead and swept here. A claim is denied while another server holds a
/// conflicting mode, or queued earlier for one. Holders are told someone waits (recall).
const LOCK_ACQUIRE: &str = r#"
local now, now_us = now_ms()
local me = ARGV[1]
local want = ARGV[3]
local lease = tonumber(ARGV[4])
local flat = redis.call('HGETALL', KEYS[3])
local conflict = false
local until_ms = nil
local mine_since = nil
local holders = {}
local queued = {}
for i = 1, #flat, 2 do
  local f, v = flat[i], flat[i + 1]
  local kind, who = string.sub(f, 1, 1), string.sub(f, 3)
  if kind == 'h' then
    local m, d = string.match(v, '^(%a):(%d+):')
    d = tonumber(d)
    if (not d) or d < now then
      redis.call('HDEL', KEYS[3], f, 'b:' .. who)
    elseif who ~= me then
      table.insert(holders, who)
      if want == 'e' or m == 'e' then
        conflict = true
        if (not until_ms) or d < until_ms then until_ms = d end
      end
    end
  elseif kind == 'w' or kind == 'o' then
    -- 'o': a server waiting to open the session (see recall); it goes before later claims.
    local a, m, d = string.match(v, '^(%d+):(%a):(%d+)$')
    a = tonumber(a)
    d = tonumber(d)
    if (not d) or d < now then
      redis.call('HDEL', KEYS[3], f)
    elseif who == me then
      if kind == 'w' then mine_since = a end
    else
      table.insert(queued, {a, m})
    end
  end
end
if not conflict then
  for _, q in ipairs(queued) do
    if ((not mine_since) or q[1] < mine_since) and (want == 'e' or q[2] == 'e') then
      conflict = true
    end
  end
end
if conflict then
  if ARGV[6] == '1' then
    -- %.0f: Lua would write a 16-digit number as 1.7e+15, which no pattern here reads back.
    local since = string.format('%.0f', mine_since or now_us)
    -- A place in line outlives the waiter's longest sleep between tries (one lease), so it is
    -- never swept just as its owner comes back.
    redis.call('HSET', KEYS[3], 'w:' .. me, since .. ':' .. want .. ':' .. (now + 2 * lease))
    keep_until(now + 2 * lease)
    for _, h in ipairs(holders) do
      redis.call('PUBLISH', 'sessfs:' .. h, 'w ' .. KEYS[1])
    end
  end
  return {0, (until_ms or (now + lease)) - now}
end
redis.call('HDEL', KEYS[3], 'w:' .. me)
redis.call('HSET', KEYS[3], 'h:' .. me, want .. ':' .. (now + lease) .. ':' .. ARGV[2])
if ARGV[7] == '1' and want == 'e' then
  redis.call('HSET', KEYS[3], 'b:' .. me, '1')
else
  redis.call('HDEL', KEYS[3], 'b:' .. me)
end
keep_until(now + lease)
-- Others still queued: the new holder must know, or it would keep the lock for itself.
return {1, load(ARGV[5]), #queued}
"#;

/// ARGV: the holder. It has sent what it closed: every waiting reader (an `o:` entry) is marked
/// served (mode 'f', which its next LOAD takes as leave to read) and woken. 0 if ARGV[1] does
/// not hold the session exclusively (any more).
const FLUSHED: &str = r#"
-- Only the holder speaks for what is pending: a late answer from a former holder must not
-- let a reader past the current one.
local v = redis.call('HGET', KEYS[3], 'h:' .. ARGV[1])
if not (v and string.match(v, '^e:')) then return 0 end
local flat = redis.call('HGETALL', KEYS[3])
for i = 1, #flat, 2 do
  if string.sub(flat[i], 1, 2) == 'o:' then
    local a, d = string.match(flat[i + 1], '^(%d+):%a:(%d+)$')
    if a then redis.call('HSET', KEYS[3], flat[i], a .. ':f:' .. d) end
    redis.call('PUBLISH', 'sessfs:' .. string.sub(flat[i], 3), 'r ' .. KEYS[1])
  end
end
return 1
"#;

/// ARGV: owner.
const FORGET_OPENER: &str = r#"
forget_opener(ARGV[1])
return 1
"#;

/// KEYS: data, meta, lock. ARGV: owner, token, lease_ms. 0 if the claim is gone, 1 if extended,
/// 2 if extended and other servers (live entries) wait for the session.
const LOCK_RENEW: &str = r#"
local now = now_ms()
local f = 'h:' .. ARGV[1]
local v = redis.call('HGET', KEYS[3], f)
if not v then return 0 end
local m, d, tok = string.match(v, '^(%a):(%d+):(.+)$')
if tok ~= ARGV[2] then return 0 end
if tonumber(d) < now then
  redis.call('HDEL', KEYS[3], f, 'b:' .. ARGV[1])
  return 0
end
local deadline = now + tonumber(ARGV[3])
redis.call('HSET', KEYS[3], f, m .. ':' .. deadline .. ':' .. tok)
keep_until(deadline)
local flat = redis.call('HGETALL', KEYS[3])
for i = 1, #flat, 2 do
  local kind, who = string.sub(flat[i], 1, 2), string.sub(flat[i], 3)
  -- A reader already served ('f') waits for nothing this holder has.
  if (kind == 'w:' or kind == 'o:') and who ~= ARGV[1]
     and not string.match(flat[i + 1], '^%d+:f:') then
    local d = tonumber(string.match(flat[i + 1], ':(%d+)$'))
    if d and d >= now then return 2 end
  end
end
return 1
"#;

/// KEYS: data, meta, lock. ARGV: owner, token. Drops the claim if it is still that token's, and
/// the owner's place in the queue, then wakes every queued server and waiting opener.
const LOCK_RELEASE: &str = r#"
local f = 'h:' .. ARGV[1]
local v = redis.call('HGET', KEYS[3], f)
if v and string.match(v, '^%a:%d+:(.+)$') == ARGV[2] then
  redis.call('HDEL', KEYS[3], f, 'b:' .. ARGV[1])
end
redis.call('HDEL', KEYS[3], 'w:' .. ARGV[1])
local flat = redis.call('HGETALL', KEYS[3])
if #flat == 0 then return 1 end
for i = 1, #flat, 2 do
  local kind = string.sub(flat[i], 1, 2)
  if kind == 'w:' or kind == 'o:' then
    redis.call('PUBLISH', 'sessfs:' .. string.sub(flat[i], 3), 'r ' .. KEYS[1])
  end
end
return 1
"#;

/// KEYS: data and meta keys of several sessions, in pairs. Each answer is false (missing), 0
/// (unreadable: a wrong type, left for a lookup to report) or the stat array. Keys from
/// several hash slots: standalone Redis only (a Cluster store sends one per slot).
const STAT_MANY: &str = r#"
local out = {}
for i = 1, #KEYS, 2 do
  local x = redis.call('PEXPIRETIME', KEYS[i])
  if x == -2 then
    out[#out + 1] = false
  else
    local n = redis.pcall('STRLEN', KEYS[i])
    local m = redis.pcall('HMGET', KEYS[i + 1], 'v', 'i', 'mode', 'uid', 'gid', 'mt', 'ct', 'x', 'n')
    if type(n) == 'table' or m.err then
      out[#out + 1] = 0
    else
      out[#out + 1] = {n, x, m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8], m[9]}
    end
  end
end
return out
"#;

/// ARGV: asker, asker's lease (ms), force ('1'/''). Returns the number of data keys deleted, or
/// a recall.
const REMOVE: &str = r#"
local r = recall(ARGV[1], tonumber(ARGV[2]))
if r then
  if ARGV[3] ~= '1' then return {'recall', r} end
  forget_opener(ARGV[1])
end
local n = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
return n
"#;

struct Scripts {
    stat: Script,
    load: Script,
    create: Script,
    write: Script,
    update_meta: Script,
    remove: Script,
    stat_many: Script,
    lock_acquire: Script,
    lock_renew: Script,
    lock_release: Script,
    forget_opener: Script,
    flushed: Script,
}

impl Scripts {
    fn new() -> Scripts {
        let lib = format!("{NOW_FN}{STAT_FN}{LOAD_FN}{PUT_META_FN}{FENCE_FN}{KEEP_FN}{RECALL_FN}");
        let with_lib = |body: &str| Script::new(&format!("{lib}{body}"));
        Scripts {
            stat: with_lib(STAT),
            load: with_lib(LOAD),
            create: with_lib(CREATE),
            write: with_lib(WRITE),
            update_meta: with_lib(UPDATE_META),
            remove: with_lib(REMOVE),
            stat_many: Script::new(STAT_MANY),
            lock_acquire: with_lib(LOCK_ACQUIRE),
            lock_renew: with_lib(LOCK_RENEW),
            lock_release: with_lib(LOCK_RELEASE),
            forget_opener: with_lib(FORGET_OPENER),
            flushed: with_lib(FLUSHED),
        }
    }
}

/// Connection settings beyond the URL.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// How long one request may take before it fails with EIO (Redis stopped, network cut).
    pub timeout: Duration,
    /// Keys per SCAN page.
    pub scan_count: usize,
}

pub struct RedisStore {
    client: redis::Client,
    con: ConnectionManager,
    keys: Keys,
    opts: StoreOptions,
    scripts: Scripts,
    scan_pattern: String,
    scan_count: usize,
    round_trips: std::sync::atomic::AtomicU64,
}

/// Sorts a Redis error into the store's kinds, naming the key where the data is at fault.
fn classify(err: RedisError, key: &str) -> StoreError {
    if err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
    {
        return StoreError::Unavailable(err.to_string());
    }
    let text = err.to_string();
    if err.code() == Some("WRONGTYPE") || text.contains("WRONGTYPE") {
        return StoreError::Corrupt {
            key: key.to_string(),
            detail: "a key of the session holds the wrong Redis type".into(),
        };
    }
    match err.kind() {
        ErrorKind::Io => StoreError::Unavailable(text),
        _ if text.contains("LOADING") || text.contains("MASTERDOWN") => {
            StoreError::Unavailable(text)
        }
        _ => StoreError::Refused(text),
    }
}

/// Turns the messages on this server's channel into events, and keeps the subscription alive:
/// after a lost connection it subscribes again and sends `Resync`, since messages published in
/// between are gone. Ends when the receiver is dropped (unmount).
async fn listen(
    client: redis::Client,
    pubsub: redis::aio::PubSub,
    channel: String,
    keys: Keys,
    tx: UnboundedSender<Event>,
) {
    let mut stream = pubsub.into_on_message();
    loop {
        while let Some(msg) = stream.next().await {
            let payload: Vec<u8> = msg.get_payload_bytes().to_vec();
            let event = match payload.split_first() {
                Some((b'r', rest)) => rest
                    .strip_prefix(b" ")
                    .and_then(|k| keys.name_of_key(k))
                    .map(Event::Released),
                Some((b'w', rest)) => rest
                    .strip_prefix(b" ")
                    .and_then(|k| keys.name_of_key(k))
                    .map(Event::Wanted),
                Some((b'f', rest)) => rest
                    .strip_prefix(b" ")
                    .and_then(|k| keys.name_of_key(k))
                    .map(Event::Flush),
                _ => None,
            };
            if let Some(e) = event
                && tx.send(e).is_err()
            {
                return;
            }
        }
        tracing::warn!(channel, "lock event subscription lost; reconnecting");
        loop {
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let Ok(mut p) = client.get_async_pubsub().await else {
                continue;
            };
            if p.subscribe(&channel).await.is_ok() {
                stream = p.into_on_message();
                tracing::info!(channel, "lock event subscription restored");
                if tx.send(Event::Resync).is_err() {
                    return;
                }
                break;
            }
        }
    }
}

fn corrupt(key: &str, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: key.to_string(),
        detail: detail.into(),
    }
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn as_bytes(v: Value) -> Option<Option<Vec<u8>>> {
    match v {
        Value::Nil => Some(None),
        Value::BulkString(b) => Some(Some(b)),
        Value::SimpleString(s) => Some(Some(s.into_bytes())),
        Value::Int(n) => Some(Some(n.to_string().into_bytes())),
        _ => None,
    }
}

/// The `recall` function's answer, {'recall', ms}: another server's lease stands in the way.
fn recall_in(v: &Value) -> Option<Duration> {
    let Value::Array(items) = v else { return None };
    match items.as_slice() {
        [Value::BulkString(tag), ms] if tag.as_slice() == b"recall" => {
            Some(Duration::from_millis(as_int(ms)?.max(0) as u64))
        }
        _ => None,
    }
}

fn raw_stat(v: Value, key: &str) -> Result<RawStat> {
    let Value::Array(items) = v else {
        return Err(corrupt(key, format!("unexpected script reply {v:?}")));
    };
    if items.len() != 11 {
        return Err(corrupt(key, "unexpected script reply length"));
    }
    let mut it = items.into_iter();
    let mut next = || it.next().unwrap_or(Value::Nil);
    let size = as_int(&next()).ok_or_else(|| corrupt(key, "no length"))?;
    let expire_at_ms = as_int(&next()).ok_or_else(|| corrupt(key, "no expiry"))?;
    let mut raw = RawStat {
        size: size.max(0) as u64,
        expire_at_ms,
        fields: Default::default(),
    };
    for f in raw.fields.iter_mut() {
        *f = as_bytes(next()).ok_or_else(|| corrupt(key, "metadata field is not a string"))?;
    }
    Ok(raw)
}

impl RedisStore {
    pub async fn connect(
        info: ConnectionInfo,
        keys: Keys,
        opts: StoreOptions,
        settings: RedisSettings,
    ) -> Result<RedisStore> {
        let client = redis::Client::open(info)
            .map_err(|e| StoreError::Unavailable(format!("bad Redis address: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(settings.timeout))
            .set_connection_timeout(Some(settings.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let con = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|e| classify(e, ""))?;
        let scan_pattern = keys.scan_pattern();
        Ok(RedisStore {
            client,
            con,
            keys,
            opts,
            scripts: Scripts::new(),
            scan_pattern,
            scan_count: settings.scan_count,
            round_trips: Default::default(),
        })
    }

    fn keys_of(&self, name: &SessionName) -> SessionKeys {
        self.keys.of(name)
    }

    fn ttl_ms(&self) -> String {
        self.opts.ttl.as_millis().max(1).to_string()
    }

    fn stat_of(&self, raw: Value, key: &str) -> Result<Stat> {
        raw_stat(raw, key)?.decode(key, &self.opts)
    }

    async fn run(&self, script: &Script, k: &SessionKeys, args: &[&[u8]]) -> Result<Value> {
        let mut inv = script.key(&k.data);
        inv.key(&k.meta);
        inv.key(&k.lock);
        for a in args {
            inv.arg(*a);
        }
        self.count();
        let mut con = self.con.clone();
        inv.invoke_async(&mut con)
            .await
            .map_err(|e| classify(e, &k.data))
    }

    fn count(&self) {
        self.round_trips
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn meta_args(&self, meta: &Meta) -> [String; 6] {
        [
            meta.mode.to_string(),
            meta.uid.to_string(),
            meta.gid.to_string(),
            meta.mtime.to_string(),
            meta.ctime.to_string(),
            self.ttl_ms(),
        ]
    }

    fn record(&self, stat: Value, data: Value, key: &str) -> Result<Record> {
        let stat = self.stat_of(stat, key)?;
        let data = match as_bytes(data) {
            Some(Some(d)) => d,
            Some(None) => Vec::new(),
            None => return Err(corrupt(key, "session content is not a string")),
        };
        Ok(Record {
            stat: Stat {
                size: data.len() as u64,
                ..stat
            },
            data: std::sync::Arc::new(data),
        })
    }

    /// The reply of the `load` Lua function: nil (missing), {stat} (the caller's version is
    /// current) or {stat, content}.
    fn decode_load(&self, reply: Value, key: &str) -> Result<Loaded> {
        match reply {
            Value::Nil => Ok(Loaded::Missing),
            Value::Array(mut items) if items.len() == 1 => {
                let stat = items.pop().unwrap_or(Value::Nil);
                Ok(Loaded::Same(self.stat_of(stat, key)?))
            }
            Value::Array(mut items) if items.len() == 2 => {
                let data = items.pop().unwrap_or(Value::Nil);
                let stat = items.pop().unwrap_or(Value::Nil);
                Ok(Loaded::Changed(self.record(stat, data, key)?))
            }
            v => Err(corrupt(key, format!("unexpected reply {v:?}"))),
        }
    }

    // The arguments are the WRITE/UPDATE_META scripts' ARGV, one for one.
    #[allow(clippy::too_many_arguments)]
    async fn put_meta(
        &self,
        script: &Script,
        name: &SessionName,
        expect: Option<u64>,
        fence: Option<Fence<'_>>,
        meta: &Meta,
        data: Option<&[u8]>,
        asker: Asker<'_>,
    ) -> Result<Written> {
        let k = self.keys_of(name);
        let [mode, uid, gid, mt, ct, ttl] = self.meta_args(meta);
        let expect = token_arg(expect);
        let version = token_arg(Some(fresh_token()));
        let incarnation = token_arg(Some(fresh_token()));
        let mut args: Vec<&[u8]> = vec![
            expect.as_bytes(),
            version.as_bytes(),
            incarnation.as_bytes(),
            mode.as_bytes(),
            uid.as_bytes(),
            gid.as_bytes(),
            mt.as_bytes(),
            ct.as_bytes(),
            ttl.as_bytes(),
        ];
        let fence_token = fence.map(|f| token_arg(Some(f.token))).unwrap_or_default();
        args.push(fence.map_or(&b""[..], |f| f.owner.as_bytes()));
        args.push(fence_token.as_bytes());
        let lease = lease_ms(asker.lease);
        args.push(asker.owner.as_bytes());
        args.push(lease.as_bytes());
        if let Some(d) = data {
            args.push(d);
        }
        let reply = self.run(script, &k, &args).await?;
        if let Some(after) = recall_in(&reply) {
            return Ok(Written::Recalled(after));
        }
        match reply {
            Value::Nil => Ok(Written::Gone),
            Value::Int(-1) => Ok(Written::Fenced),
            v => Ok(Written::Done(self.stat_of(v, &k.data)?)),
        }
    }
}

impl Store for RedisStore {
    async fn stat(&self, name: &SessionName) -> Result<Option<Stat>> {
        let k = self.keys_of(name);
        match self.run(&self.scripts.stat, &k, &[]).await? {
            Value::Nil => Ok(None),
            v => self.stat_of(v, &k.data).map(Some),
        }
    }

    async fn stat_many(&self, names: &[SessionName]) -> Result<Vec<Option<Stat>>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<SessionKeys> = names.iter().map(|n| self.keys_of(n)).collect();
        let mut inv = self.scripts.stat_many.prepare_invoke();
        for k in &keys {
            inv.key(&k.data);
            inv.key(&k.meta);
        }
        self.count();
        let mut con = self.con.clone();
        let reply: Value = inv
            .invoke_async(&mut con)
            .await
            .map_err(|e| classify(e, "a listing page"))?;
        let Value::Array(items) = reply else {
            return Err(corrupt("a listing page", "unexpected stat reply"));
        };
        Ok(items
            .into_iter()
            .zip(&keys)
            .map(|(v, k)| match v {
                Value::Array(_) => self.stat_of(v, &k.data).ok(),
                _ => None,
            })
            .collect())
    }

    async fn load(
        &self,
        name: &SessionName,
        known: Option<u64>,
        asker: Asker<'_>,
        retry: bool,
    ) -> Result<Loaded> {
        let k = self.keys_of(name);
        let known = token_arg(known);
        let lease = lease_ms(asker.lease);
        let retry: &[u8] = if retry { b"1" } else { b"" };
        let args: [&[u8]; 4] = [
            known.as_bytes(),
            asker.owner.as_bytes(),
            lease.as_bytes(),
            retry,
        ];
        let reply = self.run(&self.scripts.load, &k, &args).await?;
        if let Some(after) = recall_in(&reply) {
            return Ok(Loaded::Recalled(after));
        }
        self.decode_load(reply, &k.data)
    }

    async fn create(
        &self,
        name: &SessionName,
        meta: &Meta,
        exclusive: bool,
        asker: Asker<'_>,
        retry: bool,
    ) -> Result<Created> {
        let k = self.keys_of(name);
        let [mode, uid, gid, mt, ct, ttl] = self.meta_args(meta);
        let version = token_arg(Some(fresh_token()));
        let incarnation = token_arg(Some(fresh_token()));
        let excl: &[u8] = if exclusive { b"1" } else { b"" };
        let lease = lease_ms(asker.lease);
        let retry: &[u8] = if retry { b"1" } else { b"" };
        let args: [&[u8]; 12] = [
            excl,
            version.as_bytes(),
            incarnation.as_bytes(),
            mode.as_bytes(),
            uid.as_bytes(),
            gid.as_bytes(),
            mt.as_bytes(),
            ct.as_bytes(),
            ttl.as_bytes(),
            asker.owner.as_bytes(),
            lease.as_bytes(),
            retry,
        ];
        // The script answers 0 for O_EXCL on an existing name, {stat} when it created the
        // session, {stat, content} for the session already there, or a recall.
        let reply = self.run(&self.scripts.create, &k, &args).await?;
        if let Some(after) = recall_in(&reply) {
            return Ok(Created::Recalled(after));
        }
        match reply {
            Value::Int(0) => Ok(Created::ExistsExclusive),
            reply => match self.decode_load(reply, &k.data)? {
                Loaded::Same(stat) => Ok(Created::Created(stat)),
                Loaded::Changed(rec) => Ok(Created::Exists(rec)),
                Loaded::Missing | Loaded::Recalled(_) => {
                    Err(corrupt(&k.data, "create reply without a session"))
                }
            },
        }
    }

    async fn write(
        &self,
        name: &SessionName,
        expect: Option<u64>,
        fence: Option<Fence<'_>>,
        data: &[u8],
        meta: &Meta,
        asker: Asker<'_>,
    ) -> Result<Written> {
        self.put_meta(
            &self.scripts.write,
            name,
            expect,
            fence,
            meta,
            Some(data),
            asker,
        )
        .await
    }

    async fn update_meta(
        &self,
        name: &SessionName,
        expect: Option<u64>,
        fence: Option<Fence<'_>>,
        meta: &Meta,
        asker: Asker<'_>,
    ) -> Result<Written> {
        self.put_meta(
            &self.scripts.update_meta,
            name,
            expect,
            fence,
            meta,
            None,
            asker,
        )
        .await
    }

    async fn lock_acquire(
        &self,
        name: &SessionName,
        claim: &Claim<'_>,
        queue: bool,
        known: Option<u64>,
    ) -> Result<Acquired> {
        let k = self.keys_of(name);
        let token = token_arg(Some(claim.token));
        let mode: &[u8] = match claim.mode {
            LockMode::Exclusive => b"e",
            LockMode::Shared => b"s",
        };
        let lease = lease_ms(claim.lease);
        let known = token_arg(known);
        let queue: &[u8] = if queue { b"1" } else { b"" };
        let write_back: &[u8] = if claim.write_back { b"1" } else { b"" };
        let args: [&[u8]; 7] = [
            claim.owner.as_bytes(),
            token.as_bytes(),
            mode,
            lease.as_bytes(),
            known.as_bytes(),
            queue,
            write_back,
        ];
        let reply = self.run(&self.scripts.lock_acquire, &k, &args).await?;
        let Value::Array(mut items) = reply else {
            return Err(corrupt(&k.lock, "unexpected lock reply"));
        };
        if items.len() < 2 {
            return Err(corrupt(&k.lock, "unexpected lock reply length"));
        }
        let granted = as_int(&items[0]).unwrap_or(0) == 1;
        let contended = granted && items.len() == 3 && as_int(&items[2]).unwrap_or(0) > 0;
        if granted && items.len() == 3 {
            items.pop();
        }
        let second = items.pop().unwrap_or(Value::Nil);
        if !granted {
            let ms = as_int(&second).unwrap_or(0).max(0) as u64;
            return Ok(Acquired::Denied {
                retry_in: Duration::from_millis(ms),
            });
        }
        let loaded = self.decode_load(second, &k.data)?;
        Ok(Acquired::Granted { loaded, contended })
    }

    async fn lock_renew(&self, name: &SessionName, claim: &Claim<'_>) -> Result<Renewed> {
        let k = self.keys_of(name);
        let token = token_arg(Some(claim.token));
        let lease = lease_ms(claim.lease);
        let args: [&[u8]; 3] = [claim.owner.as_bytes(), token.as_bytes(), lease.as_bytes()];
        match self.run(&self.scripts.lock_renew, &k, &args).await? {
            Value::Int(0) => Ok(Renewed::Lost),
            Value::Int(n) => Ok(Renewed::Held { wanted: n == 2 }),
            v => Err(corrupt(&k.lock, format!("unexpected renew reply {v:?}"))),
        }
    }

    async fn lock_release(&self, name: &SessionName, owner: &str, token: u64) -> Result<()> {
        let k = self.keys_of(name);
        let token = token_arg(Some(token));
        let args: [&[u8]; 2] = [owner.as_bytes(), token.as_bytes()];
        self.run(&self.scripts.lock_release, &k, &args).await?;
        Ok(())
    }

    async fn flushed_for_readers(&self, name: &SessionName, owner: &str) -> Result<()> {
        let k = self.keys_of(name);
        self.run(&self.scripts.flushed, &k, &[owner.as_bytes()])
            .await?;
        Ok(())
    }

    async fn forget_opener(&self, name: &SessionName, owner: &str) -> Result<()> {
        let k = self.keys_of(name);
        self.run(&self.scripts.forget_opener, &k, &[owner.as_bytes()])
            .await?;
        Ok(())
    }

    async fn events(&self, owner: &str) -> Result<UnboundedReceiver<Event>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let channel = format!("sessfs:{owner}");
        let mut pubsub = self
            .client
            .get_async_pubsub()
            .await
            .map_err(|e| classify(e, &channel))?;
        pubsub
            .subscribe(&channel)
            .await
            .map_err(|e| classify(e, &channel))?;
        tokio::spawn(listen(
            self.client.clone(),
            pubsub,
            channel,
            self.keys.clone(),
            tx,
        ));
        Ok(rx)
    }

    async fn remove(&self, name: &SessionName, asker: Asker<'_>, force: bool) -> Result<Removed> {
        let k = self.keys_of(name);
        let lease = lease_ms(asker.lease);
        let force: &[u8] = if force { b"1" } else { b"" };
        let args: [&[u8]; 3] = [asker.owner.as_bytes(), lease.as_bytes(), force];
        let reply = self.run(&self.scripts.remove, &k, &args).await?;
        if let Some(after) = recall_in(&reply) {
            return Ok(Removed::Recalled(after));
        }
        match reply {
            Value::Int(n) if n > 0 => Ok(Removed::Removed),
            Value::Int(_) => Ok(Removed::Missing),
            v => Err(corrupt(&k.data, format!("unexpected remove reply {v:?}"))),
        }
    }

    async fn list(&self, cursor: u64) -> Result<(u64, Vec<SessionName>)> {
        self.count();
        let mut con = self.con.clone();
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&self.scan_pattern)
            .arg("COUNT")
            .arg(self.scan_count)
            .query_async(&mut con)
            .await
            .map_err(|e| classify(e, &self.scan_pattern))?;
        let names = keys
            .iter()
            .filter_map(|k| self.keys.name_of_key(k))
            .collect();
        Ok((next, names))
    }

    async fn ping(&self) -> Result<()> {
        self.count();
        let mut con = self.con.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut con)
            .await
            .map_err(|e| classify(e, ""))?;
        Ok(())
    }

    fn round_trips(&self) -> u64 {
        self.round_trips.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn lease_ms(lease: Duration) -> String {
    lease.as_millis().max(1).to_string()
}
