//! Redis behind the fleet features (cargo feature `redis`): [`RedisDefinitionsCache`] shares flag
//! definitions, [`RedisFallbackStore`] shares the last good `/flags` values.

use std::{
    fmt,
    sync::{Arc, Mutex as StdMutex, OnceLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use redis::{
    aio::{ConnectionManager, ConnectionManagerConfig},
    AsyncCommands, Client, ProtocolVersion, PushInfo, PushKind, Script,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Mutex, Notify};

use super::{
    cache::{BoxFuture, CachedDefinitions, DefinitionsCache},
    fallback::FallbackStore,
    FeatureFlagResult, FlagRecord, FlagValue,
};
use crate::BoxError;

/// Default bound on one Redis operation.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);

/// `SET NX PX` failed: renew the lease if it is still ours.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0";

/// Store new definitions if the lease is still ours, under a new version, and announce it.
const STORE: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return false
end
local seq = (tonumber(redis.call('HGET', KEYS[1], 'seq')) or 0) + 1
local version = seq .. '-' .. ARGV[4]
redis.call('HSET', KEYS[1], 'seq', seq, 'version', version, 'etag', ARGV[3], 'body', ARGV[2])
redis.call('PUBLISH', KEYS[3], version)
return version";

/// Delete the lease only if it is still ours.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// The `version`, `etag` and `body` fields of the definitions hash.
type Fields = (Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>);

/// A Redis connection made on first use (so that a client starts while Redis is down), then
/// kept: the `ConnectionManager` reconnects by itself.
struct Lazy {
    client: Client,
    timeout: Duration,
    conn: Mutex<Option<ConnectionManager>>,
}

impl Lazy {
    fn new(client: Client, timeout: Duration) -> Self {
        Lazy {
            client,
            timeout,
            conn: Mutex::new(None),
        }
    }

    fn config(&self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1))
    }

    async fn get(&self) -> Result<ConnectionManager, BoxError> {
        let mut conn = self.conn.lock().await;
        if let Some(conn) = &*conn {
            return Ok(conn.clone());
        }
        let made = tokio::time::timeout(
            self.timeout,
            ConnectionManager::new_with_config(self.client.clone(), self.config()),
        )
        .await
        .map_err(|_| "connecting to Redis timed out")??;
        *conn = Some(made.clone());
        Ok(made)
    }

    /// Runs `op` on the connection, within the timeout.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, BoxError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let work = async {
            let conn = self.get().await?;
            op(conn).await.map_err(BoxError::from)
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| BoxError::from("Redis did not answer in time"))?
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn token() -> String {
    format!(
        "{:016x}{:016x}",
        crate::id::random_u64(),
        crate::id::random_u64()
    )
}

/// A [`DefinitionsCache`] in Redis: one instance of the fleet at a time holds a lease and
/// fetches from PostHog; everyone else reads what it stored.
///
/// * **Lease**: `SET <prefix><project>:lease <token> NX PX <lease_ttl>`; the holder renews it
///   at each poll (a compare-and-set script: only while the value is still its token) and
///   deletes it at shutdown only if it is still its own. An instance that dies stops renewing,
///   and another takes over once the lease expires (`lease_ttl`, 90 s by default: set it
///   to two or three poll intervals).
/// * **Definitions**: the holder writes the `/flags/definitions` body as PostHog sent it, its
///   `ETag` and a new version into the hash `<prefix><project>:definitions` (only while it
///   holds the lease), and publishes the version on `<prefix><project>:changed`.
/// * **Readers** check the version at each poll (one `HGET`), and also subscribe to the
///   channel (RESP3 push, resubscribed after reconnects), so they read a new version within
///   milliseconds of its store. Each new version is compiled once; a body that does not
///   compile is ignored and the definitions already loaded stay.
/// * **Failure**: every operation is bounded ([`timeout`](Self::timeout), 500 ms); an error
///   or a timeout makes that poll go to PostHog directly (see [`DefinitionsCache`]). The
///   connection is made on first use and re-made by itself, so a client starts and works
///   while Redis is down, and returns to it when it is back.
///
/// Keys are prefixed (`posthog:flag_definitions:` by default) and carry the project API key,
/// so two projects can share one Redis. The personal API key is never written to Redis.
///
/// Use one `RedisDefinitionsCache` per client (it holds the instance's lease token).
///
/// # Example
///
/// ```no_run
/// use posthog_tower::flags::RedisDefinitionsCache;
///
/// # fn main() -> Result<(), redis::RedisError> {
/// let cache = RedisDefinitionsCache::open("redis://127.0.0.1:6379/", "phc_project_key")?;
/// let builder = posthog_tower::PostHog::builder("phc_project_key")
///     .personal_api_key("phx_personal_key")
///     .flag_definitions_cache(cache);
/// # drop(builder);
/// # Ok(())
/// # }
/// ```
pub struct RedisDefinitionsCache {
    redis: Lazy,
    definitions_key: String,
    lease_key: String,
    channel: String,
    token: String,
    lease_ttl: Duration,
    notify: Arc<Notify>,
    subscriber: OnceLock<AbortOnDrop>,
}

impl fmt::Debug for RedisDefinitionsCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The connection info may carry a Redis password: not printed.
        f.debug_struct("RedisDefinitionsCache")
            .field("definitions_key", &self.definitions_key)
            .field("lease_ttl", &self.lease_ttl)
            .field("timeout", &self.redis.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisDefinitionsCache {
    /// A cache at `url` (`redis://[user:password@]host:port/db`, or `rediss://` with TLS if the
    /// `redis` crate's TLS feature is on) for the project `project_api_key`. No connection
    /// is made yet; an invalid URL is an error.
    pub fn open(url: &str, project_api_key: &str) -> Result<Self, redis::RedisError> {
        Ok(Self::from_client(Client::open(url)?, project_api_key))
    }

    /// A cache on a `redis` crate [`Client`].
    pub fn from_client(client: Client, project_api_key: &str) -> Self {
        let mut cache = RedisDefinitionsCache {
            redis: Lazy::new(client, DEFAULT_TIMEOUT),
            definitions_key: String::new(),
            lease_key: String::new(),
            channel: String::new(),
            token: token(),
            lease_ttl: Duration::from_secs(90),
            notify: Arc::new(Notify::new()),
            subscriber: OnceLock::new(),
        };
        cache.set_keys("posthog:flag_definitions:", project_api_key.trim());
        cache
    }

    fn set_keys(&mut self, prefix: &str, project: &str) {
        self.definitions_key = format!("{prefix}{project}:definitions");
        self.lease_key = format!("{prefix}{project}:lease");
        self.channel = format!("{prefix}{project}:changed");
    }

    /// The prefix of every key (`posthog:flag_definitions:`); the project API key follows it.
    pub fn key_prefix(mut self, prefix: &str, project_api_key: &str) -> Self {
        self.set_keys(prefix, project_api_key.trim());
        self
    }

    /// How long a lease lasts without renewal (90 s): how soon another instance takes over
    /// after the holder died. Keep it longer than the poll interval.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// The longest one Redis operation may take (500 ms) before the poll goes to PostHog.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.redis.timeout = timeout;
        self
    }

    /// The subscription to the change channel, started on first use (inside the runtime).
    fn subscribe(&self) {
        self.subscriber.get_or_init(|| {
            let client = self.redis.client.clone();
            let channel = self.channel.clone();
            let notify = self.notify.clone();
            let timeout = self.redis.timeout;
            AbortOnDrop(tokio::spawn(listen(client, channel, notify, timeout)))
        });
    }
}

/// Wakes the poller for every message on `channel`, reconnecting (and resubscribing) for
/// as long as the cache lives.
async fn listen(client: Client, channel: String, notify: Arc<Notify>, timeout: Duration) {
    let info = client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let client = match Client::open(info.set_redis_settings(settings)) {
        Ok(client) => client,
        Err(e) => {
            tracing::warn!(error = %e, "posthog: no Redis subscription for flag definitions; polling only");
            return;
        }
    };
    loop {
        let (tx, mut rx) = mpsc::unbounded_channel::<PushInfo>();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_max_delay(Duration::from_secs(1))
            .set_push_sender(tx)
            .set_automatic_resubscription();
        let subscribed = async {
            let mut conn = ConnectionManager::new_with_config(client.clone(), config).await?;
            conn.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(conn)
        };
        match tokio::time::timeout(timeout * 4, subscribed).await {
            Ok(Ok(conn)) => {
                // What was stored before the subscription took effect was not announced to
                // this instance: have the poller read once now.
                notify.notify_one();
                while let Some(push) = rx.recv().await {
                    match push.kind {
                        PushKind::Message => notify.notify_one(),
                        // Subscribe anew on a fresh connection (this one sends no commands
                        // that would make it reconnect).
                        PushKind::Disconnection => break,
                        _ => {}
                    }
                }
                drop(conn);
                // Changes may have been missed meanwhile: have the poller read.
                notify.notify_one();
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "posthog: Redis subscription for flag definitions failed; retrying");
            }
            Err(_) => {
                tracing::debug!(
                    "posthog: Redis subscription for flag definitions timed out; retrying"
                );
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl DefinitionsCache for RedisDefinitionsCache {
    fn read<'a>(
        &'a self,
        known: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<CachedDefinitions>, BoxError>> {
        self.subscribe();
        Box::pin(async move {
            let key = &self.definitions_key;
            let version: Option<Vec<u8>> = self
                .redis
                .run(|mut c| async move { c.hget(key, "version").await })
                .await?;
            let Some(version) = version else {
                return Ok(None);
            };
            if known.is_some_and(|known| known.as_bytes() == version) {
                return Ok(None);
            }
            let (version, etag, body): Fields = self
                .redis
                .run(|mut c| async move {
                    redis::cmd("HMGET")
                        .arg(key)
                        .arg("version")
                        .arg("etag")
                        .arg("body")
                        .query_async(&mut c)
                        .await
                })
                .await?;
            let Some(version) = version else {
                return Ok(None);
            };
            let etag = etag
                .filter(|e| !e.is_empty())
                .map(|e| String::from_utf8_lossy(&e).into_owned());
            Ok(Some(CachedDefinitions::new(
                String::from_utf8_lossy(&version).into_owned(),
                etag,
                Bytes::from(body.unwrap_or_default()),
            )))
        })
    }

    fn should_fetch(&self) -> BoxFuture<'_, Result<bool, BoxError>> {
        Box::pin(async move {
            self.subscribe();
            let ttl = u64::try_from(self.lease_ttl.as_millis()).unwrap_or(u64::MAX);
            let (key, token) = (&self.lease_key, &self.token);
            let taken: Option<String> = self
                .redis
                .run(|mut c| async move {
                    redis::cmd("SET")
                        .arg(key)
                        .arg(token)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            if taken.is_some() {
                diag!("posthog: took the flag definitions lease");
                return Ok(true);
            }
            let renewed: i64 = self
                .redis
                .run(|mut c| async move {
                    Script::new(RENEW)
                        .key(key)
                        .arg(token)
                        .arg(ttl)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            Ok(renewed == 1)
        })
    }

    fn store(
        &self,
        etag: Option<String>,
        body: Bytes,
    ) -> BoxFuture<'_, Result<Option<String>, BoxError>> {
        Box::pin(async move {
            let nonce = format!("{:08x}", crate::id::random_u64() as u32);
            let (defs, lease, channel, token) = (
                &self.definitions_key,
                &self.lease_key,
                &self.channel,
                &self.token,
            );
            let body: &[u8] = &body;
            let etag = etag.unwrap_or_default();
            let etag = &etag;
            let version: Option<String> = self
                .redis
                .run(|mut c| async move {
                    Script::new(STORE)
                        .key(defs)
                        .key(lease)
                        .key(channel)
                        .arg(token)
                        .arg(body)
                        .arg(etag)
                        .arg(&nonce)
                        .invoke_async(&mut c)
                        .await
                })
                .await?;
            Ok(version)
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let (key, token) = (&self.lease_key, &self.token);
            let released: Result<i64, _> = self
                .redis
                .run(|mut c| async move {
                    Script::new(RELEASE)
                        .key(key)
                        .arg(token)
                        .invoke_async(&mut c)
                        .await
                })
                .await;
            match released {
                Ok(1) => diag!("posthog: released the flag definitions lease"),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "posthog: could not release the flag definitions lease; it expires by itself");
                }
            }
        })
    }

    fn changed(&self) -> BoxFuture<'_, ()> {
        self.subscribe();
        Box::pin(self.notify.notified())
    }
}

/// What [`RedisFallbackStore`] keeps per flag: the value, and when it was put (Unix ms).
#[derive(Serialize, Deserialize)]
struct Stored {
    value: FlagValue,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<i64>,
    #[serde(default)]
    locally_evaluated: bool,
    /// When it was put, in milliseconds since the Unix epoch: the age bound is checked against
    /// it (Redis's own expiry only collects garbage).
    at_ms: u64,
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How many fallback writes may wait for Redis before new ones are skipped.
const WRITE_QUEUE: usize = 10_000;

/// A [`FallbackStore`] in Redis, so that one instance's good `/flags` answer serves another
/// instance's failed lookup.
///
/// Each distinct id is a hash `<prefix><project>:<distinct id>` (prefix
/// `posthog:flag_fallback:`) with one field per flag: a JSON object with the value, payload,
/// reason, flag id and version, and the time it was put. A value is served when it is at
/// most the client's bound old (an hour), measured from that time; Redis expires the hash an
/// hour after its last write only to collect garbage.
///
/// Writes never wait on the flag read path: they are queued (up to 10 000) and sent by a
/// background task; a write that finds the queue full, or fails, is skipped (logged at debug;
/// it is a cache). Reads (only after `/flags` failed) are bounded by
/// [`timeout`](Self::timeout) (500 ms) and an error or timeout reads as "no value".
///
/// # Example
///
/// ```no_run
/// use posthog_tower::flags::RedisFallbackStore;
///
/// # fn main() -> Result<(), redis::RedisError> {
/// let store = RedisFallbackStore::open("redis://127.0.0.1:6379/", "phc_project_key")?;
/// let builder = posthog_tower::PostHog::builder("phc_project_key").flag_fallback_store(store);
/// # drop(builder);
/// # Ok(())
/// # }
/// ```
pub struct RedisFallbackStore {
    redis: Arc<Lazy>,
    prefix: String,
    expire: Duration,
    writer: StdMutex<Option<mpsc::Sender<(String, String, String)>>>,
}

impl fmt::Debug for RedisFallbackStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisFallbackStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.redis.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisFallbackStore {
    /// A store at `url` for the project `project_api_key`. No connection is made yet.
    pub fn open(url: &str, project_api_key: &str) -> Result<Self, redis::RedisError> {
        Ok(Self::from_client(Client::open(url)?, project_api_key))
    }

    /// A store on a `redis` crate [`Client`].
    pub fn from_client(client: Client, project_api_key: &str) -> Self {
        RedisFallbackStore {
            redis: Arc::new(Lazy::new(client, DEFAULT_TIMEOUT)),
            prefix: format!("posthog:flag_fallback:{}:", project_api_key.trim()),
            expire: Duration::from_secs(3600),
            writer: StdMutex::new(None),
        }
    }

    /// The prefix of every key (`posthog:flag_fallback:`); the project API key follows it.
    pub fn key_prefix(mut self, prefix: &str, project_api_key: &str) -> Self {
        self.prefix = format!("{prefix}{}:", project_api_key.trim());
        self
    }

    /// The longest one Redis read may take (500 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        if let Some(lazy) = Arc::get_mut(&mut self.redis) {
            lazy.timeout = timeout;
        }
        self
    }

    fn key(&self, distinct_id: &str) -> String {
        format!("{}{distinct_id}", self.prefix)
    }

    /// The queue of the background writer, started on first use (inside the runtime).
    fn writer(&self) -> Option<mpsc::Sender<(String, String, String)>> {
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = &*writer {
            return Some(tx.clone());
        }
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        handle.spawn(write_loop(self.redis.clone(), rx, self.expire));
        *writer = Some(tx.clone());
        Some(tx)
    }
}

/// Sends queued fallback writes until the store is dropped.
async fn write_loop(
    redis: Arc<Lazy>,
    mut rx: mpsc::Receiver<(String, String, String)>,
    expire: Duration,
) {
    let expire = u64::try_from(expire.as_millis()).unwrap_or(u64::MAX);
    while let Some((key, field, json)) = rx.recv().await {
        let written: Result<(), _> = redis
            .run(|mut c| async move {
                redis::pipe()
                    .hset(&key, &field, &json)
                    .ignore()
                    .pexpire(&key, expire as i64)
                    .ignore()
                    .query_async(&mut c)
                    .await
            })
            .await;
        if let Err(e) = written {
            tracing::debug!(error = %e, "posthog: a flag fallback value was not written to Redis");
        }
    }
}

impl FallbackStore for RedisFallbackStore {
    fn put(&self, distinct_id: &str, result: &FeatureFlagResult) {
        let record = &result.record;
        let stored = Stored {
            value: record.value.clone(),
            payload: record.payload.clone(),
            reason: record.reason.clone(),
            id: record.id,
            version: record.version,
            locally_evaluated: record.locally_evaluated,
            at_ms: unix_ms(SystemTime::now()),
        };
        let Ok(json) = serde_json::to_string(&stored) else {
            return;
        };
        let Some(writer) = self.writer() else {
            return;
        };
        if writer
            .try_send((self.key(distinct_id), result.key.clone(), json))
            .is_err()
        {
            tracing::debug!("posthog: the Redis flag fallback write queue is full; skipping");
        }
    }

    fn get<'a>(
        &'a self,
        distinct_id: &'a str,
        key: &'a str,
        max_age: Duration,
    ) -> BoxFuture<'a, Result<Option<FeatureFlagResult>, BoxError>> {
        Box::pin(async move {
            let redis_key = self.key(distinct_id);
            let redis_key = &redis_key;
            let json: Option<Vec<u8>> = self
                .redis
                .run(|mut c| async move { c.hget(redis_key, key).await })
                .await?;
            let Some(json) = json else {
                return Ok(None);
            };
            let stored: Stored = match serde_json::from_slice(&json) {
                Ok(stored) => stored,
                Err(e) => {
                    tracing::warn!(flag = key, error = %e, "posthog: an unreadable flag fallback value in Redis; ignored");
                    return Ok(None);
                }
            };
            let age = unix_ms(SystemTime::now()).saturating_sub(stored.at_ms);
            if u128::from(age) > max_age.as_millis() {
                return Ok(None);
            }
            let mut record = FlagRecord::new(stored.value, stored.locally_evaluated);
            record.payload = stored.payload;
            record.reason = stored.reason;
            record.id = stored.id;
            record.version = stored.version;
            Ok(Some(FeatureFlagResult::from_record(key, &record, None)))
        })
    }
}
