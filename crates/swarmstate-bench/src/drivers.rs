//! One client per target, and each workload's operation written for each: the same work
//! expressed the way a user of that system would write it.
//!
//! - swarmstate and NATS go through `Arc<dyn StateStore>` (`HttpStore`, `NatsStore`) and the
//!   lock recipes.
//! - etcd goes through `etcd-client` (one gRPC channel, shared by every task).
//! - Redis goes through one multiplexed `redis` connection shared by every task, and Lua
//!   scripts (`redis::Script`, EVALSHA) where a step must be atomic.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use etcd_client::{Compare, CompareOp, LockOptions, PutOptions as EtcdPut, Txn, TxnOp};
use redis::Script;
use redis::aio::MultiplexedConnection;
use swarmstate_core::{Error, Key, PutOptions, Revision, StateStore};
use swarmstate_recipes::lock::{LockGuard, acquire_lock, acquire_lock_wait};

/// How long a lock is taken for. Longer than any round, so no lock expires while held.
pub(crate) const LOCK_TTL: Duration = Duration::from_secs(10);

/// The TTL of the lease each etcd task holds its locks under.
const ETCD_LEASE_TTL: i64 = 60;

/// A CAS on a Redis hash `{v: version, d: data}`: writes when the version is still `ARGV[1]`
/// (an absent key is version 0) and returns the new version, or -1 when it moved.
const REDIS_CAS: &str = r"
local current = redis.call('HGET', KEYS[1], 'v') or '0'
if current ~= ARGV[1] then return -1 end
local next = tonumber(current) + 1
redis.call('HSET', KEYS[1], 'v', next, 'd', ARGV[2])
return next
";

/// Deletes `KEYS[1]` only while it holds `ARGV[1]` (the lock's token); 1 if deleted.
const REDIS_UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// A client of one target, cheap to clone (clones share the connection).
#[derive(Clone)]
pub(crate) enum Client {
    /// swarmstate over HTTP, or NATS: the contract, whatever is behind it.
    Store(Arc<dyn StateStore>),
    /// Boxed: the client is several kilobytes, and every task holds a clone.
    Etcd(Box<etcd_client::Client>),
    /// Boxed, as etcd's.
    Redis(Box<RedisClient>),
}

/// A Redis connection and the scripts the workloads run.
#[derive(Clone)]
pub(crate) struct RedisClient {
    pub(crate) connection: MultiplexedConnection,
    /// For connections of their own (pub/sub).
    pub(crate) client: redis::Client,
    cas: Script,
    unlock: Script,
}

/// How a lock is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockKind {
    /// swarmstate's recipes: `acquire_lock` (try) or `acquire_lock_wait` (block).
    Recipe,
    /// etcd's Lock service (`Lock` with the task's lease, `Unlock`); it always blocks.
    EtcdLockApi,
    /// A txn: create_revision == 0 → put with the task's lease; released with a delete.
    EtcdTxn,
    /// `SET key token NX PX 10000`, released by a compare-and-delete script; blocking means
    /// retrying every millisecond.
    RedisSetNx,
}

/// A lock held, in the form its release needs.
pub(crate) enum Held {
    Guard(LockGuard),
    EtcdKey(Vec<u8>),
    EtcdTxn(String),
    Redis { key: String, token: String },
}

/// What one task holds between operations.
pub(crate) struct Session {
    /// The task's lease (etcd locks), revoked by [`Client::end_session`].
    pub(crate) lease: Option<i64>,
    /// A lock owner name (or Redis token) unique to the task.
    pub(crate) owner: String,
}

impl Client {
    /// A client for a `StateStore`.
    pub(crate) fn store(store: impl StateStore + 'static) -> Client {
        Client::Store(Arc::new(store))
    }

    /// A client for the etcd member at `url`.
    pub(crate) async fn etcd(url: &str) -> Result<Client> {
        let client = etcd_client::Client::connect([url], None).await?;
        Ok(Client::Etcd(Box::new(client)))
    }

    /// A client for the Redis server at `url`, with keyspace notifications of string
    /// commands switched on (the watch workload needs them; they cost nothing unwatched).
    pub(crate) async fn redis(url: &str) -> Result<Client> {
        let client = redis::Client::open(url)?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg("K$")
            .query_async::<()>(&mut connection)
            .await?;
        Ok(Client::Redis(Box::new(RedisClient {
            connection,
            client,
            cas: Script::new(REDIS_CAS),
            unlock: Script::new(REDIS_UNLOCK),
        })))
    }

    /// Writes `value` to `key`, unconditionally.
    pub(crate) async fn put(&mut self, key: &str, value: &Bytes) -> Result<()> {
        match self {
            Client::Store(store) => {
                store
                    .put(&Key::new(key)?, value.clone(), PutOptions::overwrite())
                    .await?;
            }
            Client::Etcd(client) => {
                client.put(key, value.to_vec(), None).await?;
            }
            Client::Redis(redis) => {
                redis::cmd("SET")
                    .arg(key)
                    .arg(value.as_ref())
                    .query_async::<()>(&mut redis.connection)
                    .await?;
            }
        }
        Ok(())
    }

    /// Reads `key` with each target's default consistency (linearizable for swarmstate, NATS
    /// and etcd; Redis has one server, which answers from memory). Fails if it is absent.
    pub(crate) async fn get(&mut self, key: &str) -> Result<()> {
        let found = match self {
            Client::Store(store) => store.get(&Key::new(key)?).await?.is_some(),
            Client::Etcd(client) => !client.get(key, None).await?.kvs().is_empty(),
            Client::Redis(redis) => redis::cmd("GET")
                .arg(key)
                .query_async::<Option<Vec<u8>>>(&mut redis.connection)
                .await?
                .is_some(),
        };
        if !found {
            bail!("{key} is missing");
        }
        Ok(())
    }

    /// The version a CAS on `key` must expect: its revision (swarmstate, NATS), its
    /// mod_revision (etcd) or its version field (Redis); 0 when absent.
    pub(crate) async fn cas_read(&mut self, key: &str) -> Result<u64> {
        Ok(match self {
            Client::Store(store) => store
                .get(&Key::new(key)?)
                .await?
                .map_or(0, |entry| entry.revision.get()),
            Client::Etcd(client) => client
                .get(key, None)
                .await?
                .kvs()
                .first()
                .map_or(0, |kv| kv.mod_revision() as u64),
            Client::Redis(redis) => redis::cmd("HGET")
                .arg(key)
                .arg("v")
                .query_async::<Option<u64>>(&mut redis.connection)
                .await?
                .unwrap_or(0),
        })
    }

    /// Writes `value` to `key` if its version is still `expected`: the new version, or
    /// `None` when another writer got there first.
    pub(crate) async fn cas_write(
        &mut self,
        key: &str,
        expected: u64,
        value: &Bytes,
    ) -> Result<Option<u64>> {
        match self {
            Client::Store(store) => {
                let options = match Revision::new(expected) {
                    None => PutOptions::create(),
                    Some(revision) => PutOptions::update(revision),
                };
                match store.put(&Key::new(key)?, value.clone(), options).await {
                    Ok(revision) => Ok(Some(revision.get())),
                    Err(Error::RevisionMismatch { .. } | Error::AlreadyExists { .. }) => Ok(None),
                    Err(other) => Err(other.into()),
                }
            }
            Client::Etcd(client) => {
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        key,
                        CompareOp::Equal,
                        expected as i64,
                    )])
                    .and_then([TxnOp::put(key, value.to_vec(), None)]);
                let response = client.txn(txn).await?;
                if !response.succeeded() {
                    return Ok(None);
                }
                let header = response.header().context("a txn answer without a header")?;
                Ok(Some(header.revision() as u64))
            }
            Client::Redis(redis) => {
                let version: i64 = redis
                    .cas
                    .key(key)
                    .arg(expected)
                    .arg(value.as_ref())
                    .invoke_async(&mut redis.connection)
                    .await?;
                Ok(u64::try_from(version).ok())
            }
        }
    }

    /// What a task needs before it takes locks of `kind`: a lease for etcd.
    pub(crate) async fn begin_session(&mut self, kind: LockKind, owner: String) -> Result<Session> {
        let lease = match (kind, &mut *self) {
            (LockKind::EtcdLockApi | LockKind::EtcdTxn, Client::Etcd(client)) => {
                Some(client.lease_grant(ETCD_LEASE_TTL, None).await?.id())
            }
            _ => None,
        };
        Ok(Session { lease, owner })
    }

    /// Revokes the session's lease, if it has one.
    pub(crate) async fn end_session(&mut self, session: Session) -> Result<()> {
        if let (Some(lease), Client::Etcd(client)) = (session.lease, self) {
            client.lease_revoke(lease).await?;
        }
        Ok(())
    }

    /// Takes the lock `key` of `kind`. With `wait` false it is one attempt and the lock must
    /// be free (a held lock is an error: the uncontended rows have one task per lock); with
    /// `wait` true it returns once the lock is this session's.
    pub(crate) async fn lock(
        &mut self,
        kind: LockKind,
        key: &str,
        session: &Session,
        wait: bool,
    ) -> Result<Held> {
        match (kind, self) {
            (LockKind::Recipe, Client::Store(store)) => {
                let key = Key::new(key)?;
                let guard = if wait {
                    acquire_lock_wait(
                        store,
                        &key,
                        &session.owner,
                        LOCK_TTL,
                        Duration::from_secs(60),
                    )
                    .await?
                } else {
                    acquire_lock(store, &key, &session.owner, LOCK_TTL).await?
                };
                Ok(Held::Guard(guard))
            }
            (LockKind::EtcdLockApi, Client::Etcd(client)) => {
                let lease = session.lease.context("an etcd lock without a lease")?;
                let response = client
                    .lock(key, Some(LockOptions::new().with_lease(lease)))
                    .await?;
                Ok(Held::EtcdKey(response.key().to_vec()))
            }
            (LockKind::EtcdTxn, Client::Etcd(client)) => {
                let lease = session.lease.context("an etcd lock without a lease")?;
                let txn = Txn::new()
                    .when([Compare::create_revision(key, CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        key,
                        session.owner.as_str(),
                        Some(EtcdPut::new().with_lease(lease)),
                    )]);
                if !client.txn(txn).await?.succeeded() {
                    bail!("the etcd txn lock {key} is held");
                }
                Ok(Held::EtcdTxn(key.to_owned()))
            }
            (LockKind::RedisSetNx, Client::Redis(redis)) => loop {
                let taken: Option<String> = redis::cmd("SET")
                    .arg(key)
                    .arg(&session.owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(LOCK_TTL.as_millis() as u64)
                    .query_async(&mut redis.connection)
                    .await?;
                if taken.is_some() {
                    return Ok(Held::Redis {
                        key: key.to_owned(),
                        token: session.owner.clone(),
                    });
                }
                if !wait {
                    bail!("the Redis lock {key} is held");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            },
            (kind, _) => bail!("{kind:?} locks are not for this target"),
        }
    }

    /// Releases a lock this client took; it must still be held.
    pub(crate) async fn unlock(&mut self, held: Held) -> Result<()> {
        match (held, self) {
            (Held::Guard(guard), _) => guard.release().await?,
            (Held::EtcdKey(key), Client::Etcd(client)) => {
                client.unlock(key).await?;
            }
            (Held::EtcdTxn(key), Client::Etcd(client)) => {
                client.delete(key, None).await?;
            }
            (Held::Redis { key, token }, Client::Redis(redis)) => {
                let deleted: i64 = redis
                    .unlock
                    .key(&key)
                    .arg(&token)
                    .invoke_async(&mut redis.connection)
                    .await?;
                if deleted != 1 {
                    bail!("the Redis lock {key} was no longer ours");
                }
            }
            _ => bail!("a lock released through another target's client"),
        }
        Ok(())
    }
}
