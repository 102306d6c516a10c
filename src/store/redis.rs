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

use super::{
    Created, Loaded, Meta, RawStat, Record, Result, Stat, Store, StoreError, StoreOptions, Written,
    fresh_token, token_arg,
};
use crate::keys::{Keys, SessionKeys, SessionName};

/// Returns the state of KEYS[1]/KEYS[2] as {strlen, expiry, v, i, mode, uid, gid, mt, ct, x, n}.
const STAT_FN: &str = r#"
local function st(x)
  local m = redis.call('HMGET', KEYS[2], 'v', 'i', 'mode', 'uid', 'gid', 'mt', 'ct', 'x', 'n')
  return {redis.call('STRLEN', KEYS[1]), x, m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8], m[9]}
end
"#;

const STAT: &str = r#"
local x = redis.call('PEXPIRETIME', KEYS[1])
if x == -2 then return false end
return st(x)
"#;

/// ARGV[1]: the version the caller has, or ''. Content is sent unless that version is current
/// and the session was last written by sessfs (recorded expiry still matches).
const LOAD: &str = r#"
local x = redis.call('PEXPIRETIME', KEYS[1])
if x == -2 then return false end
local s = st(x)
if ARGV[1] ~= '' and s[3] == ARGV[1] and s[10] and tonumber(s[10]) == x
   and s[11] and tonumber(s[11]) == s[1] then
  return {s}
end
return {s, redis.call('GET', KEYS[1])}
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

/// ARGV: exclusive ('1'/''), version, incarnation, mode, uid, gid, mt, ct, ttl_ms.
const CREATE: &str = r#"
local x = redis.call('PEXPIRETIME', KEYS[1])
if x ~= -2 then
  if ARGV[1] == '1' then return 0 end
  return {st(x), redis.call('GET', KEYS[1])}
end
redis.call('SET', KEYS[1], '', 'PX', ARGV[9])
redis.call('DEL', KEYS[2])
return {put_meta(ARGV[2], ARGV[3])}
"#;

/// ARGV: expected incarnation or '', version, incarnation if none yet, mode, uid, gid, mt, ct,
/// ttl_ms, data.
const WRITE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local i = redis.call('HGET', KEYS[2], 'i')
if ARGV[1] ~= '' then
  if i ~= ARGV[1] then return false end
elseif not i then
  i = ARGV[3]
end
redis.call('SET', KEYS[1], ARGV[10], 'PX', ARGV[9])
return put_meta(ARGV[2], i)
"#;

/// ARGV as WRITE without data; ARGV[2] is the version to record if the content's version is
/// unknown (a foreign write), since no cache can hold that content under any version.
const UPDATE_META: &str = r#"
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

const REMOVE: &str = r#"
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
}

impl Scripts {
    fn new() -> Scripts {
        let with_meta = |body: &str| Script::new(&format!("{STAT_FN}{PUT_META_FN}{body}"));
        Scripts {
            stat: Script::new(&format!("{STAT_FN}{STAT}")),
            load: Script::new(&format!("{STAT_FN}{LOAD}")),
            create: with_meta(CREATE),
            write: with_meta(WRITE),
            update_meta: with_meta(UPDATE_META),
            remove: Script::new(REMOVE),
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
    con: ConnectionManager,
    keys: Keys,
    opts: StoreOptions,
    scripts: Scripts,
    scan_pattern: String,
    scan_count: usize,
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
        let con = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| classify(e, ""))?;
        let scan_pattern = keys.scan_pattern();
        Ok(RedisStore {
            con,
            keys,
            opts,
            scripts: Scripts::new(),
            scan_pattern,
            scan_count: settings.scan_count,
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
        for a in args {
            inv.arg(*a);
        }
        let mut con = self.con.clone();
        inv.invoke_async(&mut con)
            .await
            .map_err(|e| classify(e, &k.data))
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

    async fn put_meta(
        &self,
        script: &Script,
        name: &SessionName,
        expect: Option<u64>,
        meta: &Meta,
        data: Option<&[u8]>,
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
        if let Some(d) = data {
            args.push(d);
        }
        match self.run(script, &k, &args).await? {
            Value::Nil => Ok(Written::Gone),
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

    async fn load(&self, name: &SessionName, known: Option<u64>) -> Result<Loaded> {
        let k = self.keys_of(name);
        let known = token_arg(known);
        match self
            .run(&self.scripts.load, &k, &[known.as_bytes()])
            .await?
        {
            Value::Nil => Ok(Loaded::Missing),
            Value::Array(mut items) if items.len() == 1 => {
                let stat = items.pop().unwrap_or(Value::Nil);
                Ok(Loaded::Same(self.stat_of(stat, &k.data)?))
            }
            Value::Array(mut items) if items.len() == 2 => {
                let data = items.pop().unwrap_or(Value::Nil);
                let stat = items.pop().unwrap_or(Value::Nil);
                Ok(Loaded::Changed(self.record(stat, data, &k.data)?))
            }
            v => Err(corrupt(&k.data, format!("unexpected load reply {v:?}"))),
        }
    }

    async fn create(&self, name: &SessionName, meta: &Meta, exclusive: bool) -> Result<Created> {
        let k = self.keys_of(name);
        let [mode, uid, gid, mt, ct, ttl] = self.meta_args(meta);
        let version = token_arg(Some(fresh_token()));
        let incarnation = token_arg(Some(fresh_token()));
        let excl: &[u8] = if exclusive { b"1" } else { b"" };
        let args: [&[u8]; 9] = [
            excl,
            version.as_bytes(),
            incarnation.as_bytes(),
            mode.as_bytes(),
            uid.as_bytes(),
            gid.as_bytes(),
            mt.as_bytes(),
            ct.as_bytes(),
            ttl.as_bytes(),
        ];
        match self.run(&self.scripts.create, &k, &args).await? {
            Value::Int(0) => Ok(Created::ExistsExclusive),
            Value::Array(mut items) if items.len() == 1 => {
                let stat = items.pop().unwrap_or(Value::Nil);
                Ok(Created::Created(self.stat_of(stat, &k.data)?))
            }
            Value::Array(mut items) if items.len() == 2 => {
                let data = items.pop().unwrap_or(Value::Nil);
                let stat = items.pop().unwrap_or(Value::Nil);
                Ok(Created::Exists(self.record(stat, data, &k.data)?))
            }
            v => Err(corrupt(&k.data, format!("unexpected create reply {v:?}"))),
        }
    }

    async fn write(
        &self,
        name: &SessionName,
        expect: Option<u64>,
        data: &[u8],
        meta: &Meta,
    ) -> Result<Written> {
        self.put_meta(&self.scripts.write, name, expect, meta, Some(data))
            .await
    }

    async fn update_meta(
        &self,
        name: &SessionName,
        expect: Option<u64>,
        meta: &Meta,
    ) -> Result<Written> {
        self.put_meta(&self.scripts.update_meta, name, expect, meta, None)
            .await
    }

    async fn remove(&self, name: &SessionName) -> Result<bool> {
        let k = self.keys_of(name);
        match self.run(&self.scripts.remove, &k, &[]).await? {
            Value::Int(n) => Ok(n > 0),
            v => Err(corrupt(&k.data, format!("unexpected remove reply {v:?}"))),
        }
    }

    async fn list(&self, cursor: u64) -> Result<(u64, Vec<SessionName>)> {
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
        let mut con = self.con.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut con)
            .await
            .map_err(|e| classify(e, ""))?;
        Ok(())
    }
}
