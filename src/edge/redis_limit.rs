//! Fleet-wide rate limiting: the same GCRA as `rate_limit`, run atomically in Redis by a Lua
//! script (one theoretical arrival time per key, on Redis's clock), so that every fulcrum
//! using the same Redis shares one budget. Each call is bounded by a timeout; while Redis
//! cannot be asked, requests are admitted (fail open, the default) or refused with 503, and
//! each change between reachable and unreachable is logged once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;

use crate::config::{RateLimitConfig, RedisConfig};
use crate::edge::rate_limit::Decision;

/// GCRA on Redis time. KEYS[1]: the bucket; ARGV[1]: emission interval T (us); ARGV[2]:
/// tolerance tau = burst x T (us). Returns 0 when admitted, else the wait in microseconds.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > tolerance then return tat - now - tolerance end
local new = tat + interval
redis.call('SET', KEYS[1], new, 'PX', math.floor((new - now) / 1000) + 1)
return 0
";

/// After a failed connection, wait this long before trying again (requests meanwhile fail
/// open or closed at once, without waiting for Redis).
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// What a fleet-wide check decided.
pub enum Verdict {
    Decided(Decision),
    /// Redis could not be asked (not connected, error, or no answer within the timeout).
    Unavailable,
}

/// One route's fleet-wide limiter.
pub struct RedisLimiter {
    pub config: RateLimitConfig,
    redis: RedisConfig,
    route: String,
    client: Option<redis::Client>,
    script: redis::Script,
    conn: ArcSwapOption<MultiplexedConnection>,
    connecting: AtomicBool,
    /// No connection attempt before this many ms after `epoch`.
    next_attempt: AtomicU64,
    /// Whether Redis answered last time (for logging changes only).
    reachable: AtomicBool,
    epoch: Instant,
}

impl RedisLimiter {
    pub fn new(config: RateLimitConfig, redis: RedisConfig, route: &str) -> RedisLimiter {
        RedisLimiter {
            client: redis::Client::open(redis.url.as_str()).ok(),
            script: redis::Script::new(GCRA),
            conn: ArcSwapOption::empty(),
            connecting: AtomicBool::new(false),
            next_attempt: AtomicU64::new(0),
            reachable: AtomicBool::new(true),
            epoch: Instant::now(),
            route: route.to_string(),
            config,
            redis,
        }
    }

    pub fn fail_open(&self) -> bool {
        self.redis.fail_open
    }

    /// Take one request of `key` from the fleet's budget.
    pub async fn check(&self, key: &[u8]) -> Verdict {
        let mut conn = match self.connection().await {
            Ok(c) => c,
            Err(why) => return self.unavailable(&why),
        };
        let interval = (self.config.interval_nanos() / 1000).max(1);
        let tolerance = interval.saturating_mul(self.config.burst);
        let mut call = self.script.prepare_invoke();
        call.key(self.redis_key(key)).arg(interval).arg(tolerance);
        match tokio::time::timeout(self.redis.timeout, call.invoke_async::<i64>(&mut conn)).await {
            Ok(Ok(wait)) => {
                if !self.reachable.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "route {}: Redis {} answers again",
                        self.route,
                        self.redis.url
                    );
                }
                Verdict::Decided(match u64::try_from(wait) {
                    Ok(w) if w > 0 => Decision::Deny {
                        retry_after: Duration::from_micros(w),
                    },
                    _ => Decision::Allow,
                })
            }
            Ok(Err(e)) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                    self.conn.store(None);
                }
                self.unavailable(&e.to_string())
            }
            Err(_) => self.unavailable("timed out"),
        }
    }

    /// `fulcrum:rl:ROUTE:HASH`, the hash (SHA-256, 128 bits, hex) the same in every process.
    fn redis_key(&self, key: &[u8]) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, key);
        let hex: String = digest
            .as_ref()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("fulcrum:rl:{}:{hex}", self.route)
    }

    /// The shared connection; one request at a time (re)connects, at most once a second.
    async fn connection(&self) -> Result<MultiplexedConnection, String> {
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        let now = self.now_ms();
        if now < self.next_attempt.load(Ordering::Relaxed) {
            return Err("not connected (next attempt within a second)".into());
        }
        if self.connecting.swap(true, Ordering::AcqRel) {
            return Err("not connected yet".into());
        }
        let connected = match &self.client {
            None => Err("bad URL".to_string()),
            Some(client) => tokio::time::timeout(
                self.redis.timeout.max(Duration::from_millis(200)),
                client.get_multiplexed_async_connection(),
            )
            .await
            .map_err(|_| "connection timed out".to_string())
            .and_then(|r| r.map_err(|e| format!("cannot connect: {e}"))),
        };
        match &connected {
            Ok(c) => self.conn.store(Some(Arc::new(c.clone()))),
            Err(_) => {
                let retry = u64::try_from(RECONNECT_AFTER.as_millis()).unwrap_or(1000);
                self.next_attempt.store(now + retry, Ordering::Relaxed);
            }
        }
        self.connecting.store(false, Ordering::Release);
        connected
    }

    fn unavailable(&self, why: &str) -> Verdict {
        if self.reachable.swap(false, Ordering::Relaxed) {
            let then = if self.redis.fail_open {
                "admitting requests (fail open)"
            } else {
                "refusing requests with 503"
            };
            tracing::warn!(
                "route {}: Redis {} cannot be asked ({why}): {then} until it answers",
                self.route,
                self.redis.url
            );
        }
        Verdict::Unavailable
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}
