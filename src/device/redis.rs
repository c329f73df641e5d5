//! The shared store: grants in Redis, so several gateway instances serve one device flow and a
//! restart forgets nothing. One server, a Sentinel-watched primary, or a Redis/Valkey Cluster
//! (`store.redis.mode`); the keys are the same in all three.
//!
//! Keys (each behind `store.redis.key_prefix`, `devicegate:` by default):
//!
//! | key                    | value                                   | expires                    |
//! |------------------------|-----------------------------------------|----------------------------|
//! | `grant:{sha256(device)}` | the grant as JSON (the device code is never kept) | grant lifetime + grace |
//! | `uc:{user code}`       | the grant's device-code hash            | same                       |
//! | `id:{id}`              | the grant's device-code hash            | same                       |
//! | `live`                 | sorted set: device-code hash → when it leaves (ms) | with its last member |
//! | `secret`               | the browser secret shared by instances  | never                      |
//! | `limit:{key}`          | events spent in a limit's window        | when the window ends       |
//! | `slots:{key}`          | sorted set: member → until when (s)     | with its last slot         |
//! | `{ended}`              | sorted set: ended grant id → when written (s) | trimmed to an hour   |
//! | `{ended}:{id}`         | an ended grant's operator view as JSON  | an hour                    |
//! | `clients`              | hash: client id → `1`/`0`, the operators' kill switch | never        |
//!
//! A grant lives under the hash of its device code, so a poll, the hot path, is one `GET` and
//! one compare-and-set in every mode. The user-code and id indexes point at that hash.
//!
//! Atomicity. `update` is optimistic: read the grant, apply the change in Rust, and write it
//! back with a compare-and-set script that succeeds only while Redis still holds exactly what
//! was read; a lost race re-reads and re-applies. So when two instances answer polls for the
//! same approved grant at the same instant, only one of them sees `Approved` and writes
//! `Delivered`. With one primary (standalone, sentinel), `insert` is one Lua script: capacity
//! check, user-code claim and the writes happen together, and an index lookup follows its
//! pointer in the same script.
//!
//! Cluster. No script touches two slots: the grant, its two indexes and `live` hash to
//! different slots, so the load spreads over every primary, and only the ended list, written
//! once per grant by the sweep, shares one slot through its `{ended}` hash tag. `insert` then
//! takes steps, each atomic on its own node: reserve a place in `live` (the capacity check),
//! claim the user code (`SET NX`), then write the grant and its id index. A refused claim gives
//! the place back. A step that fails leaves only keys that expire with the grant and that no
//! device ever learned (the device was answered 503); a reserved place is never under-counted,
//! so `store.max_pending` still bounds what is stored, and a lost step at worst holds a place
//! until its grant would have expired. An index lookup is two reads there. `secret`, each
//! `limit:` counter, each `slots:` set and `clients` are single keys, each exact on the one
//! node that owns it.
//!
//! The clock for capacity is Redis's own `TIME`, the one clock all instances share.
//!
//! Failing closed. Every operation, connecting included, is bounded by
//! `store.redis.command_timeout_ms`; past it, or when Redis refuses the connection, the store
//! answers [`StoreError::Unavailable`], which devices see as 503 `temporarily_unavailable`.
//! Connections are re-opened by themselves once Redis is back. With Sentinel, a failed
//! operation makes the next one ask the sentinels which server is the primary now (all at
//! once: the first to name a server that confirms it is primary wins, so one hung sentinel
//! holds up nothing), and every second the store asks in the background too, so a promoted replica is followed within
//! about a second of the sentinels' agreeing on it. A Cluster connection follows `MOVED` and
//! `ASK` redirections and refreshes its slot map by itself.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use futures_util::StreamExt;
use rand::{rngs::OsRng, RngCore};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{ConnectionAddr, RedisError, RedisFuture, Script, TlsMode};
use tokio::sync::OnceCell;

use super::grant::{Grant, GrantView};
use super::store::{Key, Store, StoreError, REMEMBER_MAX, REMEMBER_SECS};
use crate::config::{self, RedisMode};

/// Attempts of one `update` before giving up on a grant that keeps changing under it.
const MAX_CAS_ATTEMPTS: usize = 64;

/// How often the Sentinel store asks the sentinels which server is the primary, besides after
/// every failure.
const SENTINEL_RECHECK: Duration = Duration::from_secs(1);

/// Reads in flight at once when a Cluster store lists its grants.
const LIST_CONCURRENCY: usize = 64;

/// KEYS: grant, user-code index, id index, live set.
/// ARGV: grant JSON, milliseconds to keep, max_pending, device-code hash.
const INSERT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[3]) then return 'full' end
if not redis.call('SET', KEYS[2], ARGV[4], 'NX', 'PX', ARGV[2]) then return 'taken' end
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[2]), ARGV[4])
if redis.call('PTTL', KEYS[4]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[4], ARGV[2]) end
return 'ok'
";

/// Cluster insert, first step. KEYS: live set. ARGV: milliseconds to keep, max_pending,
/// device-code hash. Takes a place unless the store is full.
const RESERVE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 'full' end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[3])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 'ok'
";

/// One primary only (in a Cluster these keys are on different slots). KEYS: a key that may hold
/// the grant itself (optional), then an index whose value `v` names the grant at `ARGV[1] .. v`.
/// ARGV: the grant key prefix. Returns the grant's key and JSON, in one trip.
///
/// The layout before Sentinel and Cluster support kept grants under their id, with a `dc:`
/// index from the device-code hash, and `uc:` naming the id; lookups still find those grants
/// (`grant:{id}` directly, or through `dc:`/`uc:`), so logins pending during a rolling upgrade
/// go on. They are all gone one grant lifetime + 5 minutes after the upgrade.
const LOAD: &str = r"
if #KEYS == 2 then
  local g = redis.call('GET', KEYS[1])
  if g then return {KEYS[1], g} end
end
local v = redis.call('GET', KEYS[#KEYS])
if not v then return false end
local k = ARGV[1] .. v
local g = redis.call('GET', k)
if g then return {k, g} end
return false
";

/// KEYS: grant. ARGV: the JSON that was read, the new JSON. Writes only if nothing changed
/// since the read, keeping the grant's TTL.
const COMPARE_AND_SET: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
";

/// KEYS: live set. Grants still stored by Redis's clock.
const COUNT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
";

/// KEYS: live set. The device-code hashes of the grants still stored by Redis's clock.
const LIVE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
";
/// KEYS: secret. ARGV: a fresh candidate. The first instance's candidate wins for good.
const SECRET: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
";

/// KEYS: a counter. ARGV: the budget, the window in seconds. Spends one event unless the
/// budget is spent; the first event opens the window (the key's TTL). 0 when spent now, else
/// the seconds until the window ends.
const SPEND: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if n > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  local ttl = redis.call('TTL', KEYS[1])
  if ttl < 1 then ttl = 1 end
  return ttl
end
return 0
";

/// KEYS: a counter. Gives one event back, never below zero.
const REFUND: &str = r"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 0 then redis.call('DECR', KEYS[1]) end
return 1
";

/// KEYS: a slot set (sorted set: member → until when). ARGV: member, max, expires_at, now.
/// Returns 0 when the member holds a slot, else the seconds until the first slot frees.
const ADMIT: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
    local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    local wait = tonumber(first[2]) - tonumber(ARGV[4])
    if wait < 1 then wait = 1 end
    return wait
  end
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
local ttl = tonumber(ARGV[3]) - tonumber(ARGV[4]) + 60
if redis.call('TTL', KEYS[1]) < ttl then redis.call('EXPIRE', KEYS[1], ttl) end
return 0
";

/// KEYS: live set. ARGV: the grant key prefix. Every stored grant's JSON (one primary only).
const LIST: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for _, h in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')) do
  local g = redis.call('GET', ARGV[1] .. h)
  if g then out[#out + 1] = g end
end
return out
";

/// KEYS: ended set, the view's key. ARGV: id, JSON, now (s), seconds kept, most kept.
const REMEMBER: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[3]) - tonumber(ARGV[4]))
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -1 - tonumber(ARGV[5]))
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
";

/// KEYS: ended set. ARGV: the view key prefix, the oldest time kept (s). The views kept.
const REMEMBERED: &str = r"
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[2], '+inf')) do
  local v = redis.call('GET', ARGV[1] .. id)
  if v then out[#out + 1] = v end
end
return out
";

struct Scripts {
    list: Script,
    live: Script,
    remember: Script,
    remembered: Script,
    spend: Script,
    refund: Script,
    admit: Script,
    insert: Script,
    reserve: Script,
    load: Script,
    compare_and_set: Script,
    count: Script,
    secret: Script,
}

/// One connection to whichever server answers: a standalone or Sentinel-named primary, or the
/// whole Cluster (which routes each command to the node owning its key).
#[derive(Clone)]
enum Conn {
    Primary(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            Conn::Primary(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Primary(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Primary(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// How many multiplexed connections to open to a primary, and how each reconnects.
struct Pools {
    size: usize,
    config: ConnectionManagerConfig,
}

impl Pools {
    /// Connections to `server`, opened lazily (inside the runtime that first uses them).
    fn open(&self, server: &redis::Client) -> Result<Vec<ConnectionManager>, StoreError> {
        (0..self.size)
            .map(|_| ConnectionManager::new_lazy_with_config(server.clone(), self.config.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(unavailable)
    }
}

/// How the store reaches Redis.
enum Link {
    /// One server: a pool of multiplexed connections, opened on first use inside the server's
    /// runtime.
    Standalone {
        client: redis::Client,
        pools: Pools,
        pool: OnceCell<Vec<ConnectionManager>>,
    },
    Sentinel(Arc<Sentinel>),
    /// One connection multiplexed to every node of the Cluster.
    Cluster {
        client: ClusterClient,
        conn: OnceCell<ClusterConnection>,
    },
}

/// The primary that the sentinels name, and the pool open to it.
struct Sentinel {
    /// One client per sentinel.
    clients: Vec<tokio::sync::Mutex<SentinelClient>>,
    /// One lookup at a time; requests that waited take its answer.
    lookup: tokio::sync::Mutex<()>,
    pools: Pools,
    master_name: String,
    /// The primary's address and the pool open to it.
    current: RwLock<Option<(String, Arc<Vec<ConnectionManager>>)>>,
    /// An operation failed: the next one asks the sentinels first.
    suspect: AtomicBool,
    /// A background check is running.
    checking: AtomicBool,
    checked_at: Mutex<Instant>,
}

impl Sentinel {
    /// Asks the sentinels for the primary, and opens a new pool when it moved. Unless
    /// `always`, a request that waited for another one's answer takes that answer.
    async fn resolve(&self, always: bool) -> Result<Arc<Vec<ConnectionManager>>, StoreError> {
        let _one = self.lookup.lock().await;
        if !always && !self.suspect.load(Ordering::Relaxed) {
            if let Some((_, pool)) = self.current.read().ok().and_then(|c| c.clone()) {
                return Ok(pool);
            }
        }
        let primary = self.ask_sentinels().await?;
        if let Ok(mut at) = self.checked_at.lock() {
            *at = Instant::now();
        }
        let addr = primary.get_connection_info().addr().to_string();
        if let Some((known, pool)) = self.current.read().ok().and_then(|c| c.clone()) {
            if known == addr {
                self.suspect.store(false, Ordering::Relaxed);
                return Ok(pool);
            }
        }
        let pool = Arc::new(self.pools.open(&primary)?);
        let before = self
            .current
            .write()
            .ok()
            .and_then(|mut c| c.replace((addr.clone(), pool.clone())));
        self.suspect.store(false, Ordering::Relaxed);
        match before {
            Some((old, _)) => {
                tracing::warn!(master = %self.master_name, from = %old, to = %addr, "redis sentinel: following the new primary")
            }
            None => {
                tracing::info!(master = %self.master_name, primary = %addr, "redis sentinel: primary found")
            }
        }
        Ok(pool)
    }

    /// Every sentinel at once; the first to name a primary that confirms its role (the driver
    /// checks the sentinel's flags and the server's `ROLE`) wins, the others are dropped.
    async fn ask_sentinels(&self) -> Result<redis::Client, StoreError> {
        let mut asks: futures_util::stream::FuturesUnordered<_> = self
            .clients
            .iter()
            .map(|c| async move { c.lock().await.async_get_client().await })
            .collect();
        let mut last = None;
        while let Some(answer) = asks.next().await {
            match answer {
                Ok(primary) => return Ok(primary),
                Err(e) => last = Some(e),
            }
        }
        Err(StoreError::Unavailable(format!(
            "redis sentinel: no primary '{}' known to the sentinels{}",
            self.master_name,
            last.map(|e| format!(": {e}")).unwrap_or_default()
        )))
    }

    async fn pool(self: &Arc<Self>) -> Result<Arc<Vec<ConnectionManager>>, StoreError> {
        let current = self.current.read().ok().and_then(|c| c.clone());
        match current {
            Some((_, pool)) if !self.suspect.load(Ordering::Relaxed) => {
                let due = self
                    .checked_at
                    .lock()
                    .map(|at| at.elapsed() >= SENTINEL_RECHECK)
                    .unwrap_or(true);
                if due && !self.checking.swap(true, Ordering::AcqRel) {
                    // A failover the pool has not noticed yet (the old primary still answers,
                    // demoted to a replica): look in the background, not in this request.
                    let me = Arc::clone(self);
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(SENTINEL_RECHECK, me.resolve(true)).await;
                        me.checking.store(false, Ordering::Release);
                    });
                }
                Ok(pool)
            }
            _ => self.resolve(false).await,
        }
    }
}

/// Grant storage in Redis shared by every gateway instance.
pub struct RedisStore {
    link: Link,
    next: AtomicUsize,
    prefix: String,
    retain_ms: u64,
    max_pending: u64,
    timeout: Duration,
    scripts: Scripts,
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

/// The driver's own messages could quote the URL, password included: say only what is wrong.
fn bad_url(_: RedisError) -> String {
    "store.redis: cannot use the URL and CA file".to_string()
}

fn certificates(cfg: &config::Redis) -> Option<redis::TlsCertificates> {
    cfg.ca_pem.as_ref().map(|pem| redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.clone()),
    })
}

fn link(cfg: &config::Redis) -> Result<Link, String> {
    let pools = || Pools {
        size: cfg.pool_size,
        config: ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.command_timeout))
            .set_response_timeout(Some(cfg.command_timeout))
            .set_number_of_retries(2)
            .set_max_delay(cfg.command_timeout),
    };
    use redis::IntoConnectionInfo;
    let info = cfg.url.expose().into_connection_info().map_err(bad_url)?;
    let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
    let settings = info.redis_settings();
    Ok(match &cfg.mode {
        RedisMode::Standalone => Link::Standalone {
            client: match certificates(cfg) {
                None => redis::Client::open(cfg.url.expose()),
                Some(certs) => redis::Client::build_with_tls(cfg.url.expose(), certs),
            }
            .map_err(bad_url)?,
            pools: pools(),
            pool: OnceCell::new(),
        },
        RedisMode::Sentinel {
            master_name,
            sentinels,
            username,
            password,
        } => {
            // One client per sentinel, asked all at once: a sentinel that hangs (accepts, never
            // answers) must not hold up the others' answer.
            let one = |host: &str, port: u16| {
                let addr = if tls {
                    ConnectionAddr::TcpTls {
                        host: host.to_string(),
                        port,
                        insecure: false,
                        tls_params: None,
                    }
                } else {
                    ConnectionAddr::Tcp(host.to_string(), port)
                };
                let mut b =
                    SentinelClientBuilder::new([addr], master_name, SentinelServerType::Master)?
                        .set_client_to_redis_db(settings.db());
                if let Some(user) = settings.username() {
                    b = b.set_client_to_redis_username(user);
                }
                if let Some(pass) = settings.password() {
                    b = b.set_client_to_redis_password(pass);
                }
                if let Some(user) = username {
                    b = b.set_client_to_sentinel_username(user);
                }
                if let Some(pass) = password {
                    b = b.set_client_to_sentinel_password(pass.expose());
                }
                if tls {
                    b = b
                        .set_client_to_redis_tls_mode(TlsMode::Secure)
                        .set_client_to_sentinel_tls_mode(TlsMode::Secure);
                    if let Some(certs) = certificates(cfg) {
                        b = b
                            .set_client_to_redis_certificates(certs.clone())
                            .set_client_to_sentinel_certificates(certs);
                    }
                }
                b.build().map(tokio::sync::Mutex::new)
            };
            let clients = sentinels
                .iter()
                .map(|(host, port)| one(host, *port))
                .collect::<Result<Vec<_>, _>>()
                .map_err(bad_url)?;
            Link::Sentinel(Arc::new(Sentinel {
                clients,
                lookup: tokio::sync::Mutex::new(()),
                pools: pools(),
                master_name: master_name.clone(),
                current: RwLock::new(None),
                suspect: AtomicBool::new(false),
                checking: AtomicBool::new(false),
                checked_at: Mutex::new(Instant::now()),
            }))
        }
        RedisMode::Cluster { nodes } => {
            let scheme = if tls { "rediss" } else { "redis" };
            let seeds =
                std::iter::once(info.clone()).chain(nodes.iter().filter_map(|(h, p)| {
                    format!("{scheme}://{h}:{p}").into_connection_info().ok()
                }));
            let mut b = ClusterClient::builder(seeds)
                .connection_timeout(cfg.command_timeout)
                .response_timeout(cfg.command_timeout)
                .retries(3)
                .min_retry_wait(20)
                .max_retry_wait(cfg.command_timeout.as_millis().try_into().unwrap_or(1000));
            if let Some(user) = settings.username() {
                b = b.username(user);
            }
            if let Some(pass) = settings.password() {
                b = b.password(pass);
            }
            if tls {
                b = b.tls(TlsMode::Secure);
                if let Some(certs) = certificates(cfg) {
                    b = b.certs(certs);
                }
            }
            Link::Cluster {
                client: b.build().map_err(bad_url)?,
                conn: OnceCell::new(),
            }
        }
    })
}

impl RedisStore {
    /// A store keeping each grant `retain_for` after it is written, at most `max_pending` at
    /// once. Nothing connects yet: the first operation does.
    pub fn new(
        cfg: &config::Redis,
        retain_for: Duration,
        max_pending: u64,
    ) -> Result<Self, String> {
        Ok(Self {
            link: link(cfg)?,
            next: AtomicUsize::new(0),
            prefix: cfg.key_prefix.clone(),
            retain_ms: u64::try_from(retain_for.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            max_pending,
            timeout: cfg.command_timeout,
            scripts: Scripts {
                list: Script::new(LIST),
                live: Script::new(LIVE),
                remember: Script::new(REMEMBER),
                remembered: Script::new(REMEMBERED),
                spend: Script::new(SPEND),
                refund: Script::new(REFUND),
                admit: Script::new(ADMIT),
                insert: Script::new(INSERT),
                reserve: Script::new(RESERVE),
                load: Script::new(LOAD),
                compare_and_set: Script::new(COMPARE_AND_SET),
                count: Script::new(COUNT),
                secret: Script::new(SECRET),
            },
        })
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}{name}", self.prefix)
    }

    fn clustered(&self) -> bool {
        matches!(self.link, Link::Cluster { .. })
    }

    fn pick(&self, pool: &[ConnectionManager]) -> Result<Conn, StoreError> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % pool.len().max(1);
        pool.get(i)
            .cloned()
            .map(Conn::Primary)
            .ok_or_else(|| StoreError::Unavailable("redis: no connection".into()))
    }

    /// One connection: round robin over the primary's pool, or the Cluster connection.
    async fn conn(&self) -> Result<Conn, StoreError> {
        match &self.link {
            Link::Standalone {
                client,
                pools,
                pool,
            } => {
                let pool = pool
                    .get_or_try_init(|| async { pools.open(client) })
                    .await?;
                self.pick(pool)
            }
            Link::Sentinel(sentinel) => self.pick(&sentinel.pool().await?),
            Link::Cluster { client, conn } => conn
                .get_or_try_init(|| client.get_async_connection())
                .await
                .cloned()
                .map(Conn::Cluster)
                .map_err(unavailable),
        }
    }

    /// Runs one whole store operation within the command timeout: a Redis that hangs is as
    /// unavailable as one that is down, and callers answer fast either way. With Sentinel a
    /// failure sends the next operation to the sentinels first.
    async fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let out = tokio::time::timeout(self.timeout, op)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(
                    "redis did not answer within store.redis.command_timeout_ms".into(),
                ))
            });
        if let (Err(StoreError::Unavailable(_)), Link::Sentinel(s)) = (&out, &self.link) {
            s.suspect.store(true, Ordering::Relaxed);
        }
        out
    }

    /// The key and stored JSON of the grant behind `key`.
    async fn load(
        &self,
        conn: &mut Conn,
        key: Key<'_>,
    ) -> Result<Option<(String, String)>, StoreError> {
        if self.clustered() {
            let index = match key {
                Key::DeviceCodeHash(h) => {
                    let at = self.key("grant:", h);
                    return Ok(get(conn, at.clone()).await?.map(|json| (at, json)));
                }
                Key::Id(id) => self.key("id:", id),
                Key::UserCode(c) => self.key("uc:", c),
            };
            return match get(conn, index).await? {
                Some(hash) => {
                    let at = self.key("grant:", &hash);
                    Ok(get(conn, at.clone()).await?.map(|json| (at, json)))
                }
                None => Ok(None),
            };
        }
        let mut script = self.scripts.load.prepare_invoke();
        match key {
            Key::DeviceCodeHash(h) => script.key(self.key("grant:", h)).key(self.key("dc:", h)),
            Key::Id(id) => script.key(self.key("grant:", id)).key(self.key("id:", id)),
            Key::UserCode(c) => script.key(self.key("uc:", c)),
        };
        script
            .arg(self.key("grant:", ""))
            .invoke_async(conn)
            .await
            .map_err(unavailable)
    }

    async fn try_insert(&self, grant: &Grant) -> Result<(), StoreError> {
        let json = to_json(grant)?;
        let mut conn = self.conn().await?;
        let hash = &grant.device_code_hash;
        if self.clustered() {
            return self.insert_in_steps(&mut conn, grant, json).await;
        }
        let outcome: String = self
            .scripts
            .insert
            .key(self.key("grant:", hash))
            .key(self.key("uc:", &grant.user_code))
            .key(self.key("id:", &grant.id))
            .key(self.key("live", ""))
            .arg(json)
            .arg(self.retain_ms)
            .arg(self.max_pending)
            .arg(hash)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        match outcome.as_str() {
            "ok" => Ok(()),
            "full" => Err(StoreError::Full),
            "taken" => Err(StoreError::UserCodeTaken),
            other => Err(StoreError::Unavailable(format!(
                "redis: unexpected insert answer '{other}'"
            ))),
        }
    }

    /// The Cluster insert: a place in `live`, the user code, then the grant and its id index,
    /// each on the node owning its key (see the module docs for what a failed step leaves).
    async fn insert_in_steps(
        &self,
        conn: &mut Conn,
        grant: &Grant,
        json: String,
    ) -> Result<(), StoreError> {
        let hash = &grant.device_code_hash;
        let live = self.key("live", "");
        let reserved: String = self
            .scripts
            .reserve
            .key(&live)
            .arg(self.retain_ms)
            .arg(self.max_pending)
            .arg(hash)
            .invoke_async(conn)
            .await
            .map_err(unavailable)?;
        if reserved != "ok" {
            return Err(StoreError::Full);
        }
        let claimed: Option<String> = redis::cmd("SET")
            .arg(self.key("uc:", &grant.user_code))
            .arg(hash)
            .arg("NX")
            .arg("PX")
            .arg(self.retain_ms)
            .query_async(conn)
            .await
            .map_err(unavailable)?;
        if claimed.is_none() {
            let _: i64 = redis::cmd("ZREM")
                .arg(&live)
                .arg(hash)
                .query_async(conn)
                .await
                .map_err(unavailable)?;
            return Err(StoreError::UserCodeTaken);
        }
        let set = |key: String, value: &str| {
            let mut conn = conn.clone();
            let cmd = redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(self.retain_ms)
                .to_owned();
            async move {
                let _: () = cmd.query_async(&mut conn).await.map_err(unavailable)?;
                Ok::<_, StoreError>(())
            }
        };
        tokio::try_join!(
            set(self.key("grant:", hash), &json),
            set(self.key("id:", &grant.id), hash)
        )?;
        Ok(())
    }

    async fn try_update(
        &self,
        key: Key<'_>,
        change: &mut (dyn for<'g> FnMut(&'g mut Grant) + Send),
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some((at, read)) = self.load(&mut conn, key).await? else {
                return Ok(false);
            };
            let before = from_json(&read)?;
            let mut grant = before.clone();
            change(&mut grant);
            if grant == before {
                return Ok(true);
            }
            let written: i64 = self
                .scripts
                .compare_and_set
                .key(&at)
                .arg(&read)
                .arg(to_json(&grant)?)
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            if written == 1 {
                return Ok(true);
            }
            // Another instance changed the grant since we read it: read again and redo.
        }
        Err(StoreError::Unavailable(
            "redis: the grant kept changing during the update".into(),
        ))
    }

    /// Every stored grant's JSON: one script with one primary; in a Cluster the live hashes,
    /// then each grant from its own node.
    async fn stored(&self, conn: &mut Conn) -> Result<Vec<String>, StoreError> {
        if !self.clustered() {
            return self
                .scripts
                .list
                .key(self.key("live", ""))
                .arg(self.key("grant:", ""))
                .invoke_async(conn)
                .await
                .map_err(unavailable);
        }
        let hashes: Vec<String> = self
            .scripts
            .live
            .key(self.key("live", ""))
            .invoke_async(conn)
            .await
            .map_err(unavailable)?;
        let reads = futures_util::stream::iter(hashes)
            .map(|h| {
                let mut conn = conn.clone();
                let key = self.key("grant:", &h);
                async move { get(&mut conn, key).await }
            })
            .buffered(LIST_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        let mut out = Vec::with_capacity(reads.len());
        for read in reads {
            out.extend(read?);
        }
        Ok(out)
    }
}

async fn get(conn: &mut Conn, key: String) -> Result<Option<String>, StoreError> {
    redis::cmd("GET")
        .arg(key)
        .query_async(conn)
        .await
        .map_err(unavailable)
}

fn to_json(grant: &Grant) -> Result<String, StoreError> {
    serde_json::to_string(grant)
        .map_err(|e| StoreError::Unavailable(format!("cannot encode a grant: {e}")))
}

fn from_json(json: &str) -> Result<Grant, StoreError> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Unavailable(format!("redis holds an unreadable grant: {e}")))
}

#[async_trait]
impl Store for RedisStore {
    async fn insert(&self, grant: &Grant) -> Result<(), StoreError> {
        self.bounded(self.try_insert(grant)).await
    }

    async fn get(&self, key: Key<'_>) -> Result<Option<Grant>, StoreError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            match self.load(&mut conn, key).await? {
                Some((_, json)) => from_json(&json).map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn update(
        &self,
        key: Key<'_>,
        change: &mut (dyn for<'g> FnMut(&'g mut Grant) + Send),
    ) -> Result<bool, StoreError> {
        self.bounded(self.try_update(key, change)).await
    }

    async fn count(&self) -> Result<u64, StoreError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            self.scripts
                .count
                .key(self.key("live", ""))
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)
        })
        .await
    }

    async fn shared_secret(&self) -> Result<[u8; 32], StoreError> {
        self.bounded(async {
            let mut candidate = [0u8; 32];
            OsRng.fill_bytes(&mut candidate);
            let mut conn = self.conn().await?;
            let stored: String = self
                .scripts
                .secret
                .key(self.key("secret", ""))
                .arg(STANDARD.encode(candidate))
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            STANDARD
                .decode(stored)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    StoreError::Unavailable("redis holds a malformed shared secret".into())
                })
        })
        .await
    }

    async fn spend(
        &self,
        key: &str,
        max: u32,
        window_secs: u64,
        _now: u64,
    ) -> Result<Result<(), u64>, StoreError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            let wait: u64 = self
                .scripts
                .spend
                .key(self.key("limit:", key))
                .arg(max)
                .arg(window_secs.max(1))
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(if wait == 0 { Ok(()) } else { Err(wait) })
        })
        .await
    }

    async fn refund(&self, key: &str) -> Result<(), StoreError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            let _: i64 = self
                .scripts
                .refund
                .key(self.key("limit:", key))
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn admit(
        &self,
        key: &str,
        member: &str,
        max: u64,
        expires_at: u64,
        now: u64,
    ) -> Result<Result<(), u64>, StoreError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            let wait: u64 = self
                .scripts
                .admit
                .key(self.key("slots:", key))
                .arg(member)
                .arg(max)
                .arg(expires_at)
                .arg(now)
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(if wait == 0 { Ok(()) } else { Err(wait) })
        })
        .await
    }

    async fn list(&self) -> Result<Vec<Grant>, StoreError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            let found = self.stored(&mut conn).await?;
            found.iter().map(|j| from_json(j)).collect()
        })
        .await
    }

    async fn remember(&self, view: &GrantView, now: u64) -> Result<(), StoreError> {
        let json = serde_json::to_string(view)
            .map_err(|e| StoreError::Unavailable(format!("cannot encode a grant view: {e}")))?;
        self.bounded(async {
            let mut conn = self.conn().await?;
            let _: i64 = self
                .scripts
                .remember
                .key(self.key("{ended}", ""))
                .key(self.key("{ended}:", &view.id))
                .arg(&view.id)
                .arg(json)
                .arg(now)
                .arg(REMEMBER_SECS)
                .arg(REMEMBER_MAX)
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn remembered(&self, now: u64) -> Result<Vec<GrantView>, StoreError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            let found: Vec<String> = self
                .scripts
                .remembered
                .key(self.key("{ended}", ""))
                .arg(self.key("{ended}:", ""))
                .arg(now.saturating_sub(REMEMBER_SECS))
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            found
                .iter()
                .map(|j| {
                    serde_json::from_str(j).map_err(|e| {
                        StoreError::Unavailable(format!("redis holds an unreadable view: {e}"))
                    })
                })
                .collect()
        })
        .await
    }

    async fn set_client_enabled(&self, client_id: &str, enabled: bool) -> Result<(), StoreError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            let _: i64 = redis::cmd("HSET")
                .arg(self.key("clients", ""))
                .arg(client_id)
                .arg(if enabled { "1" } else { "0" })
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn client_states(&self) -> Result<Vec<(String, bool)>, StoreError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            let all: Vec<(String, String)> = redis::cmd("HGETALL")
                .arg(self.key("clients", ""))
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(all.into_iter().map(|(k, v)| (k, v == "1")).collect())
        })
        .await
    }

    async fn release(&self, key: &str, member: &str) -> Result<(), StoreError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            let _: i64 = redis::cmd("ZREM")
                .arg(self.key("slots:", key))
                .arg(member)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }
}

/// Real Cluster and Sentinel setups, shared with the end-to-end tests.
#[cfg(test)]
#[path = "../../tests/common/redis_ha.rs"]
mod redis_ha;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::device::grant::tests::grant;
    use crate::device::store::conformance;
    use std::process::{Child, Command, Stdio};

    /// A throwaway `redis-server` in a temporary directory, killed on drop.
    struct Server {
        child: Child,
        url: String,
        _dir: tempfile::TempDir,
    }

    fn spawn_redis(args: &[&str]) -> Child {
        Command::new("redis-server")
            .args(["--save", "", "--appendonly", "no"])
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}): apt-get install redis-server (./scripts/test.sh does it)")
            })
    }

    fn wait_until(what: &str, ready: impl Fn() -> bool) {
        for _ in 0..400 {
            if ready() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not start: {what}");
    }

    impl Server {
        /// Listening on a Unix socket only.
        fn start() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let socket = dir.path().join("redis.sock");
            let sock = socket.to_str().unwrap();
            let child = spawn_redis(&["--port", "0", "--unixsocket", sock]);
            wait_until(sock, || socket.exists());
            Self {
                child,
                url: format!("unix://{sock}"),
                _dir: dir,
            }
        }

        fn url(&self) -> String {
            self.url.clone()
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn options(url: &str, prefix: &str, timeout_ms: u64) -> config::Redis {
        config::Redis {
            mode: RedisMode::Standalone,
            url: Secret::new(url.to_string()),
            key_prefix: prefix.to_string(),
            pool_size: 2,
            command_timeout: Duration::from_millis(timeout_ms),
            ca_pem: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance() {
        let server = Server::start();
        let n = AtomicUsize::new(0);
        conformance::run(|retain, max| {
            let prefix = format!("t{}:", n.fetch_add(1, Ordering::Relaxed));
            RedisStore::new(&options(&server.url(), &prefix, 2000), retain, max).unwrap()
        })
        .await;
    }

    fn ha_options(mode: RedisMode, url: String, prefix: &str) -> config::Redis {
        config::Redis {
            mode,
            url: Secret::new(url),
            key_prefix: prefix.to_string(),
            pool_size: 2,
            command_timeout: Duration::from_millis(3000),
            ca_pem: None,
        }
    }

    fn nodes(list: &[String]) -> Vec<(String, u16)> {
        list.iter()
            .map(|a| {
                let (h, p) = a.rsplit_once(':').unwrap();
                (h.to_string(), p.parse().unwrap())
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance_on_a_cluster_with_keys_on_every_primary() {
        let cluster = tokio::task::spawn_blocking(redis_ha::Cluster::start)
            .await
            .unwrap();
        let (url, rest) = cluster.url_with_password(redis_ha::PASSWORD);
        let mode = RedisMode::Cluster {
            nodes: nodes(&rest),
        };
        let n = AtomicUsize::new(0);
        conformance::run(|retain, max| {
            let prefix = format!("t{}:", n.fetch_add(1, Ordering::Relaxed));
            RedisStore::new(&ha_options(mode.clone(), url.clone(), &prefix), retain, max).unwrap()
        })
        .await;

        // Grants spread over the three primaries: no hash tag pins them to one slot.
        let store = RedisStore::new(
            &ha_options(mode.clone(), url.clone(), "spread:"),
            Duration::from_secs(600),
            100,
        )
        .unwrap();
        for i in 0..30 {
            let mut g = grant(1000);
            g.id = format!("spread{i}");
            g.device_code_hash = crate::device::code::hash_device_code(&g.id);
            g.user_code = format!("SPRD{i:04}");
            store.insert(&g).await.unwrap();
            let found = store.get(Key::UserCode(&g.user_code)).await.unwrap();
            assert_eq!(found.map(|f| f.id), Some(g.id.clone()));
            assert!(store.get(Key::Id(&g.id)).await.unwrap().is_some());
        }
        assert_eq!(store.count().await.unwrap(), 30);
        assert_eq!(store.list().await.unwrap().len(), 30);
        for port in cluster.ports() {
            let keys = redis_ha::cli(port, &["--scan", "--pattern", "spread:grant:*"]);
            let here = keys.lines().count();
            assert!(here >= 2, "node {port} holds {here} of 30 grants");
        }
    }

    /// The mode and URL reaching `setup`'s primary as the ACL user, over TLS if it has TLS.
    fn through_sentinels(setup: &redis_ha::Sentinels) -> (RedisMode, String) {
        let mode = RedisMode::Sentinel {
            master_name: redis_ha::MASTER.into(),
            sentinels: nodes(&setup.addresses()),
            username: None,
            password: None,
        };
        let scheme = if setup.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let (user, password, master) = (redis_ha::USER, redis_ha::PASSWORD, redis_ha::MASTER);
        (mode, format!("{scheme}://{user}:{password}@{master}/0"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance_through_sentinels() {
        let setup = tokio::task::spawn_blocking(redis_ha::Sentinels::start)
            .await
            .unwrap();
        let (mode, url) = through_sentinels(&setup);
        let n = AtomicUsize::new(0);
        conformance::run(|retain, max| {
            let prefix = format!("t{}:", n.fetch_add(1, Ordering::Relaxed));
            RedisStore::new(&ha_options(mode.clone(), url.clone(), &prefix), retain, max).unwrap()
        })
        .await;
    }

    /// A Cluster shard failing over: the primary holding a grant is killed; until its replica
    /// is promoted every read of that grant is `Unavailable` (never "not found"), and then the
    /// promoted replica serves it, updates included.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_cluster_shard_failover_is_followed() {
        let mut cluster = tokio::task::spawn_blocking(redis_ha::Cluster::start_with_replicas)
            .await
            .unwrap();
        let (url, rest) = cluster.url_with_password(redis_ha::PASSWORD);
        let mode = RedisMode::Cluster {
            nodes: nodes(&rest),
        };
        let mut cfg = ha_options(mode, url, "fo:");
        cfg.command_timeout = Duration::from_millis(500);
        let store = RedisStore::new(&cfg, Duration::from_secs(600), 100).unwrap();
        let mut g = grant(1000);
        g.device_code_hash = crate::device::code::hash_device_code("shard failover");
        store.insert(&g).await.unwrap();
        let key = format!("fo:grant:{}", g.device_code_hash);
        let primary = cluster.owner(&key);
        let replica = cluster.replica_of(primary);
        redis_ha::wait_until("the replica in step", Duration::from_secs(10), || {
            cluster.dbsize(replica) == cluster.dbsize(primary)
        });

        cluster.kill(primary);
        let killed = std::time::Instant::now();
        let mut unavailable = 0;
        loop {
            assert!(killed.elapsed() < Duration::from_secs(60), "no failover");
            match store.get(Key::DeviceCodeHash(&g.device_code_hash)).await {
                Ok(Some(found)) => {
                    assert_eq!(found, g);
                    break;
                }
                Ok(None) => panic!("the grant was reported gone during the failover"),
                Err(StoreError::Unavailable(_)) => unavailable += 1,
                Err(e) => panic!("{e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "shard failover: {unavailable} reads Unavailable, then served by the promoted replica after {:?}",
            killed.elapsed()
        );
        assert!(unavailable > 0, "the kill was never seen");
        redis_ha::wait_until(
            "the replica named the owner",
            Duration::from_secs(10),
            || cluster.owner(&key) == replica,
        );
        assert!(store
            .update(Key::UserCode(&g.user_code), &mut |g| g.last_poll =
                Some(1002))
            .await
            .unwrap());
        let found = store.get(Key::Id(&g.id)).await.unwrap().unwrap();
        assert_eq!(found.last_poll, Some(1002));
    }

    /// TLS to every node: a Cluster whose nodes (and bus) speak TLS only, and a Sentinel setup
    /// whose sentinels and data nodes do. The store verifies each against the configured CA:
    /// with it the conformance suite passes, without it nothing is stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn tls_to_every_cluster_node_and_every_sentinel() {
        let cluster = tokio::task::spawn_blocking(|| redis_ha::Cluster::start_with(true))
            .await
            .unwrap();
        let (url, rest) = cluster.url_with_password(redis_ha::PASSWORD);
        assert!(url.starts_with("rediss://"));
        let cluster_mode = RedisMode::Cluster {
            nodes: nodes(&rest),
        };
        let sentinels = tokio::task::spawn_blocking(|| redis_ha::Sentinels::start_with(true))
            .await
            .unwrap();
        let (sentinel_mode, sentinel_url) = through_sentinels(&sentinels);
        for (mode, url, tls) in [
            (cluster_mode, url, &cluster.tls),
            (sentinel_mode, sentinel_url, &sentinels.tls),
        ] {
            let ca = std::fs::read(&tls.as_ref().unwrap().ca).unwrap();
            let with = |ca_pem: Option<Vec<u8>>, prefix: &str| {
                let mut cfg = ha_options(mode.clone(), url.clone(), prefix);
                cfg.ca_pem = ca_pem;
                cfg.command_timeout = Duration::from_millis(1500);
                cfg
            };
            // The system roots do not know the throwaway CA: refused.
            let untrusted =
                RedisStore::new(&with(None, "untrusted:"), Duration::from_secs(60), 10).unwrap();
            assert!(matches!(
                untrusted.insert(&grant(0)).await,
                Err(StoreError::Unavailable(_))
            ));
            let n = AtomicUsize::new(0);
            conformance::run(|retain, max| {
                let prefix = format!("tls{}:", n.fetch_add(1, Ordering::Relaxed));
                RedisStore::new(&with(Some(ca.clone()), &prefix), retain, max).unwrap()
            })
            .await;
        }
    }

    /// A rolling upgrade: grants that the release before wrote (under their id, with `dc:` and
    /// `uc:` naming the id) are still found by every key, updated where they are, listed and
    /// counted, and keep their user code.
    #[tokio::test]
    async fn grants_in_the_layout_before_are_still_served() {
        let server = Server::start();
        let store = RedisStore::new(
            &options(&server.url(), "dg:", 2000),
            Duration::from_secs(900),
            10,
        )
        .unwrap();
        let g = grant(1000);
        let mut conn = store.conn().await.unwrap();
        let json = serde_json::to_string(&g).unwrap();
        for (key, value) in [
            (format!("dg:grant:{}", g.id), json.as_str()),
            (format!("dg:dc:{}", g.device_code_hash), g.id.as_str()),
            (format!("dg:uc:{}", g.user_code), g.id.as_str()),
        ] {
            let _: () = redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(900_000)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        let _: i64 = redis::cmd("ZADD")
            .arg("dg:live")
            .arg(9_000_000_000_000_i64)
            .arg(&g.id)
            .query_async(&mut conn)
            .await
            .unwrap();

        for key in [
            Key::DeviceCodeHash(&g.device_code_hash),
            Key::UserCode(&g.user_code),
            Key::Id(&g.id),
        ] {
            assert_eq!(store.get(key).await.unwrap(), Some(g.clone()), "{key:?}");
        }
        assert!(store
            .update(Key::DeviceCodeHash(&g.device_code_hash), &mut |g| g
                .last_poll =
                Some(1001))
            .await
            .unwrap());
        let stored: String = redis::cmd("GET")
            .arg(format!("dg:grant:{}", g.id))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(from_json(&stored).unwrap().last_poll, Some(1001));
        let moved: i64 = redis::cmd("EXISTS")
            .arg(format!("dg:grant:{}", g.device_code_hash))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(moved, 0, "updated where it is, not copied");
        assert_eq!(store.count().await.unwrap(), 1);
        assert_eq!(store.list().await.unwrap().len(), 1);

        let mut same_code = grant(1000);
        same_code.id = "new".into();
        same_code.device_code_hash = "newhash".into();
        assert!(matches!(
            store.insert(&same_code).await,
            Err(StoreError::UserCodeTaken)
        ));
    }

    #[tokio::test]
    async fn instances_share_grants_and_secret_and_keys_expire() {
        let server = Server::start();
        let retain = Duration::from_secs(900);
        let a = RedisStore::new(&options(&server.url(), "dg:", 2000), retain, 10).unwrap();
        let b = RedisStore::new(&options(&server.url(), "dg:", 2000), retain, 10).unwrap();
        let other = RedisStore::new(&options(&server.url(), "other:", 2000), retain, 10).unwrap();
        let g = grant(1000);
        a.insert(&g).await.unwrap();
        assert_eq!(
            b.get(Key::UserCode(&g.user_code)).await.unwrap(),
            Some(g.clone())
        );
        assert_eq!(other.get(Key::Id(&g.id)).await.unwrap(), None);
        assert_eq!(
            a.shared_secret().await.unwrap(),
            b.shared_secret().await.unwrap()
        );
        assert_ne!(
            a.shared_secret().await.unwrap(),
            other.shared_secret().await.unwrap()
        );

        // Every grant key carries a TTL of the retention, and an update keeps it.
        b.update(Key::Id(&g.id), &mut |g| g.last_poll = Some(1001))
            .await
            .unwrap();
        let mut conn = a.conn().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("dg:*")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(keys.len(), 5, "{keys:?}");
        for key in keys.iter().filter(|k| !k.ends_with("secret")) {
            let ttl: i64 = redis::cmd("PTTL")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(ttl > 890_000 && ttl <= 900_000, "{key}: {ttl}");
        }
    }

    #[tokio::test]
    async fn unreachable_redis_is_unavailable_not_a_hang() {
        // Nothing listens: the connection is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("redis://127.0.0.1:{port}");
        let store =
            RedisStore::new(&options(&url, "dg:", 300), Duration::from_secs(60), 10).unwrap();
        let g = grant(0);
        assert!(matches!(
            store.insert(&g).await,
            Err(StoreError::Unavailable(_))
        ));

        // Something accepts but never answers: the command timeout ends the wait.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", silent.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        });
        let store =
            RedisStore::new(&options(&url, "dg:", 300), Duration::from_secs(60), 10).unwrap();
        // The guard only keeps a broken build from hanging the suite; it is 30× the timeout.
        let r = tokio::time::timeout(Duration::from_secs(10), store.get(Key::Id("x"))).await;
        match r {
            Ok(Err(StoreError::Unavailable(_))) => {}
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
}
