//! The fleet-wide send rate limiter: every sender process, on every machine, draws from the same
//! budgets in Redis before calling the Graph API.
//!
//! Meta enforces two limits per business number (reference C.3): **throughput** (80 messages/s by
//! default, up to 1000; over it → 130429) and the **pair rate** to one recipient (about one message
//! per 6 s, with bursts that are borrowed from later; over it → 131056). Both are checked *before*
//! a send, so the fleet stays under them instead of discovering them through errors.
//!
//! # Algorithm
//! GCRA (generic cell rate algorithm), the token bucket expressed as one timestamp per key: the
//! *theoretical arrival time* (TAT) of the next message at the configured rate. With emission
//! interval `T = 1 / per_second` and `burst` cells, a message at time `now` conforms when
//! `max(TAT, now) + T - now <= burst × T`; if it does, TAT moves to `max(TAT, now) + T`. In any
//! window of length `W`, at most `burst + W / T` messages conform. One `SET` per key, no refill loop.
//!
//! Meta counts the customers' messages against the number's throughput too: the conversation
//! stage charges each one to the number budget ([`RateLimiter::charge_inbound`], never refused,
//! its debt capped at a second), so replies leave room for them.
//!
//! [`ACQUIRE_SCRIPT`] evaluates the number budget and the pair budget together and commits both
//! only if both conform, now or, when only the number's queue stands in the way, at its first free
//! slot within the caller's horizon (the caller then sleeps until that moment and sends: its slot
//! is reserved; a slot taken for a message waiting on its recipient's pair budget would hold the
//! number's other recipients back with it); otherwise it commits
//! nothing and returns how long until both would conform, so a refusal never consumes anyone's
//! budget. It reads the clock with `redis.call('TIME')`:
//! only Redis's clock matters, so skew between sender machines cannot inflate the rate. (Redis 5+
//! replicates script *effects*, so a non-deterministic command inside a script is allowed.)
//!
//! # Keys
//! `P` is the Redis prefix (`WAFLEET_REDIS_PREFIX`). Every key of one business number shares the
//! hash tag `{rl:<phone_number_id>}`, so each script touches one Redis Cluster slot.
//!
//! | key | type | what |
//! |---|---|---|
//! | `P:{rl:<pnid>}:number` | string (µs), TTL | TAT of the number's throughput budget |
//! | `P:{rl:<pnid>}:to:<recipient>` | string (µs), TTL | TAT of the pair budget to one recipient |
//! | `P:{rl:<pnid>}:paused` | string, TTL | the number is paused (after 130429/131048 storms) until it expires |
//! | `P:{rl:<pnid>}:penalty:<recipient>` | string, TTL | that recipient is held back (after 131056) until it expires |
//! | `P:{rl:<pnid>}:strikes:<recipient>` | integer, TTL 1 h | 131056 errors for that recipient (Meta's X in 4^X s); forgotten an hour after the last |
//!
//! TATs expire once they are in the past (a missing key and an old TAT mean the same: a full
//! bucket), so idle recipients cost no memory. `<recipient>` is the `wa_id` or the business-scoped
//! user id, whichever the sender addresses.
//!
//! # Penalties and pauses
//! [`RateLimiter::penalize_recipient`] and [`RateLimiter::pause_number`] set a hold key with a
//! TTL; [`ACQUIRE_SCRIPT`] answers `Wait` while either hold of a request exists. A hold is only ever
//! extended, never shortened, by a later call. The budgets themselves are untouched, so after a
//! hold the recipient may use its configured burst again; a repeated 131056 then earns a longer
//! hold (Meta's 4^X schedule, [`wafleet_core::retry::pair_rate_backoff`]): X is counted per
//! recipient by [`RateLimiter::pair_rate_failure`], not per message, so every message to that
//! customer backs off together and none uses up its retry attempts on it.
//!
//! # Why no local (`governor`) limiter in front
//! A per-process limiter would only save Redis round trips when it refuses, and it cannot give a
//! cell back: each attempt that passes locally but is refused by Redis would still spend a local
//! cell, so under contention the local limiter runs ahead of the fleet's real usage and throttles
//! more than the budget says. Redis already answers a refusal with the exact wait, so a caller
//! sleeps instead of polling: one round trip per send attempt, well under Redis's capacity at
//! 80–1000 messages/s per number. (`governor` does serve in the simulator, where one process owns
//! the whole limit.) Scheduled slots keep it to one round trip per send even under contention.

use std::time::Duration;

use redis::RedisError;

/// Atomically checks holds and both budgets; commits both TATs only if everything conforms, now
/// or within the horizon.
///
/// `KEYS`: number TAT, pair TAT, number pause, recipient penalty.
/// `ARGV`: number interval µs, number burst, pair interval µs, pair burst (interval 0 = no limit),
/// horizon µs.
/// Returns 0 for go now; `-w` when the number's slot `w` µs from now is taken (send then); `w > 0`
/// when nothing was taken (a hold, a wait on the recipient's pair budget, or no slot within the
/// horizon): ask again in `w` µs.
pub const ACQUIRE_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local hold = 0

for i = 3, 4 do
  local held = redis.call('PTTL', KEYS[i])
  if held > 0 and held * 1000 > hold then hold = held * 1000 end
end

-- How long until this budget has room, and its TAT (at least now).
local function gcra(key, interval, burst)
  if interval <= 0 then return 0, 0 end
  local stored = redis.call('GET', key)
  local tat = stored and tonumber(stored) or 0
  if tat < now then tat = now end
  local wait = tat + interval - interval * burst - now
  if wait < 0 then wait = 0 end
  return wait, tat
end

local number_interval, pair_interval = tonumber(ARGV[1]), tonumber(ARGV[3])
local number_wait, number_tat = gcra(KEYS[1], number_interval, tonumber(ARGV[2]))
local pair_wait, pair_tat = gcra(KEYS[2], pair_interval, tonumber(ARGV[4]))
local wait = math.max(number_wait, pair_wait)
-- Only the number's own queue is scheduled ahead: a slot taken for a message that waits on its
-- recipient would hold every other recipient of the number back until then.
if hold > 0 or wait > tonumber(ARGV[5]) or pair_wait > number_wait then
  return math.ceil(math.max(hold, wait))
end

-- Both budgets are charged at the moment the message goes, which conforms for both.
local send_at = now + wait
local function commit(key, interval, tat)
  if interval <= 0 then return end
  local new_tat = math.max(tat, send_at) + interval
  redis.call('SET', key, string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
end
commit(KEYS[1], number_interval, number_tat)
commit(KEYS[2], pair_interval, pair_tat)
return -wait
"#;

/// Charges the number budget for messages that already happened (the customers' own: Meta counts
/// inbound messages against the number's throughput too). The debt is capped at `ARGV[3]` µs
/// ahead of now: Meta's accounting is per second, so a flood of inbound messages holds replies
/// back for at most that long after it, not for as long as the flood would take at the rate.
///
/// `KEYS`: number TAT. `ARGV`: interval µs, messages, cap µs.
const CHARGE_SCRIPT: &str = r#"
local interval = tonumber(ARGV[1])
if interval <= 0 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local stored = redis.call('GET', KEYS[1])
local tat = stored and tonumber(stored) or 0
if tat < now then tat = now end
local new_tat = math.min(tat + interval * tonumber(ARGV[2]), now + tonumber(ARGV[3]))
if new_tat > tat then
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
end
return 0
"#;

/// How far ahead of now inbound messages may push the number's budget ([`CHARGE_SCRIPT`]).
pub const INBOUND_DEBT_CAP: Duration = Duration::from_secs(1);

/// Sets a hold key for `ARGV[1]` ms unless it already lasts at least that long.
const HOLD_SCRIPT: &str = r#"
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ms then
  redis.call('SET', KEYS[1], '1', 'PX', ms)
end
return 0
"#;

/// How long a recipient's 131056 count is kept after its last one: a customer who has not
/// tripped the pair rate for this long starts again at Meta's first step (1 s).
pub const PAIR_STRIKES_TTL: Duration = Duration::from_secs(3600);

/// A rate: `per_second` messages on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// Average rate. Zero, negative or non-finite means "no limit" for this budget.
    pub per_second: f64,
    /// How many messages may go back to back after a quiet period; at least 1 is used.
    pub burst: u32,
}

impl Budget {
    /// Meta's default throughput of a business number: 80 messages/s. Burst 80 lets a quiet
    /// number send a second's worth at once, which Meta's per-second accounting tolerates.
    pub const NUMBER_DEFAULT: Budget = Budget {
        per_second: 80.0,
        burst: 80,
    };

    /// Meta's pair rate (1 message per 6 s to one recipient). Meta allows bursts of up to 45 but
    /// makes us pay them back; 3 covers a reply split in a few parts without borrowing much.
    pub const PAIR_DEFAULT: Budget = Budget {
        per_second: 1.0 / 6.0,
        burst: 3,
    };

    pub fn new(per_second: f64, burst: u32) -> Self {
        Self { per_second, burst }
    }

    /// Emission interval in whole microseconds (at least 1), or 0 for "no limit".
    fn interval_micros(self) -> u64 {
        if self.per_second.is_finite() && self.per_second > 0.0 {
            (1e6 / self.per_second).round().max(1.0) as u64
        } else {
            0
        }
    }

    fn burst(self) -> u32 {
        self.burst.max(1)
    }
}

/// The answer to one request for a send slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Both budgets had room; the slot is taken. Send now.
    Go,
    /// The number's next free slot, this long from now, is taken for this send: sleep, then send
    /// without asking again.
    Scheduled(Duration),
    /// Nothing was taken (a hold, a wait on the recipient's pair budget, or no slot within the
    /// horizon asked for). Ask again after this long (it is exact unless others take the slot
    /// first).
    Wait(Duration),
}

/// The rate limiter's key names (see the module docs).
#[derive(Debug, Clone)]
pub struct RateLimitKeys {
    prefix: String,
}

impl RateLimitKeys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }
    pub fn number(&self, phone_number_id: &str) -> String {
        format!("{}:{{rl:{phone_number_id}}}:number", self.prefix)
    }
    pub fn pair(&self, phone_number_id: &str, recipient: &str) -> String {
        format!("{}:{{rl:{phone_number_id}}}:to:{recipient}", self.prefix)
    }
    pub fn paused(&self, phone_number_id: &str) -> String {
        format!("{}:{{rl:{phone_number_id}}}:paused", self.prefix)
    }
    pub fn strikes(&self, phone_number_id: &str, recipient: &str) -> String {
        format!(
            "{}:{{rl:{phone_number_id}}}:strikes:{recipient}",
            self.prefix
        )
    }
    pub fn penalty(&self, phone_number_id: &str, recipient: &str) -> String {
        format!(
            "{}:{{rl:{phone_number_id}}}:penalty:{recipient}",
            self.prefix
        )
    }
}

/// The fleet-wide limiter. Holds no state of its own besides key names and scripts: all state is
/// in Redis, so any number of processes can share budgets. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    keys: RateLimitKeys,
    /// Loaded by hash on first use (and again if Redis restarted and forgot it).
    acquire: redis::Script,
    hold: redis::Script,
    charge: redis::Script,
}

impl RateLimiter {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            keys: RateLimitKeys::new(prefix),
            acquire: redis::Script::new(ACQUIRE_SCRIPT),
            hold: redis::Script::new(HOLD_SCRIPT),
            charge: redis::Script::new(CHARGE_SCRIPT),
        }
    }

    pub fn keys(&self) -> &RateLimitKeys {
        &self.keys
    }

    /// Takes one send slot from `phone_number_id`'s `number` budget and from its `pair` budget to
    /// `recipient`, both or neither: now ([`Decision::Go`]), or, when only the number's budget is
    /// short, its first free slot within `horizon` ([`Decision::Scheduled`]). Budgets are arguments, not stored, so a number's throughput
    /// can change (80 → 1000 mps) without touching Redis; every process must pass the same ones.
    ///
    /// Scheduling is what lets a busy number reach its rate: senders that had to wait each get
    /// their own slot, one interval apart, instead of all waking at the same moment, racing for
    /// one slot and losing the time each late ask costs (with a burst of 1, a slot nobody takes
    /// on time is gone).
    pub async fn acquire<C>(
        &self,
        con: &mut C,
        phone_number_id: &str,
        recipient: &str,
        number: Budget,
        pair: Budget,
        horizon: Duration,
    ) -> Result<Decision, RedisError>
    where
        C: redis::aio::ConnectionLike,
    {
        let micros: i64 = self
            .acquire
            .key(self.keys.number(phone_number_id))
            .key(self.keys.pair(phone_number_id, recipient))
            .key(self.keys.paused(phone_number_id))
            .key(self.keys.penalty(phone_number_id, recipient))
            .arg(number.interval_micros())
            .arg(number.burst())
            .arg(pair.interval_micros())
            .arg(pair.burst())
            .arg(horizon.as_micros().min(i64::MAX as u128) as i64)
            .invoke_async(con)
            .await?;
        Ok(match micros {
            0 => Decision::Go,
            us if us < 0 => Decision::Scheduled(Duration::from_micros(us.unsigned_abs())),
            us => Decision::Wait(Duration::from_micros(us as u64)),
        })
    }

    /// Holds back sends to one recipient for `for_` (after a 131056 pair-rate error; use Meta's
    /// 4^X s schedule). Other recipients of the number are unaffected. Never shortens a hold.
    pub async fn penalize_recipient<C>(
        &self,
        con: &mut C,
        phone_number_id: &str,
        recipient: &str,
        for_: Duration,
    ) -> Result<(), RedisError>
    where
        C: redis::aio::ConnectionLike,
    {
        self.set_hold(con, self.keys.penalty(phone_number_id, recipient), for_)
            .await
    }

    /// Counts a customer's message against `phone_number_id`'s `number` budget: Meta's
    /// throughput counts inbound and outbound messages alike (reference C.3), so replies leave
    /// room for what customers send. Never refused, never waits; the debt is capped at
    /// [`INBOUND_DEBT_CAP`].
    pub async fn charge_inbound<C>(
        &self,
        con: &mut C,
        phone_number_id: &str,
        number: Budget,
    ) -> Result<(), RedisError>
    where
        C: redis::aio::ConnectionLike,
    {
        let _: i64 = self
            .charge
            .key(self.keys.number(phone_number_id))
            .arg(number.interval_micros())
            .arg(1)
            .arg(INBOUND_DEBT_CAP.as_micros() as u64)
            .invoke_async(con)
            .await?;
        Ok(())
    }

    /// Meta refused a message to `recipient` for the pair rate (131056): counts the failure and
    /// holds the recipient back for 4^X s (X: its failures before this one within the last
    /// hour, [`PAIR_STRIKES_TTL`]). Returns the hold.
    pub async fn pair_rate_failure<C>(
        &self,
        con: &mut C,
        phone_number_id: &str,
        recipient: &str,
    ) -> Result<Duration, RedisError>
    where
        C: redis::aio::ConnectionLike,
    {
        let strikes = self.keys.strikes(phone_number_id, recipient);
        // MULTI/EXEC: a connection lost between the two would leave a count that never
        // expires, and the recipient's holds would grow for good.
        let (count,): (i64,) = redis::pipe()
            .atomic()
            .cmd("INCR")
            .arg(&strikes)
            .cmd("PEXPIRE")
            .arg(&strikes)
            .arg(PAIR_STRIKES_TTL.as_millis() as u64)
            .ignore()
            .query_async(con)
            .await?;
        let hold = wafleet_core::retry::pair_rate_backoff((count - 1).clamp(0, 64) as u32);
        self.penalize_recipient(con, phone_number_id, recipient, hold)
            .await?;
        Ok(hold)
    }

    /// Holds back every send of a business number for `for_` (after a storm of 130429, or a
    /// 131048 spam limit). Never shortens a pause.
    pub async fn pause_number<C>(
        &self,
        con: &mut C,
        phone_number_id: &str,
        for_: Duration,
    ) -> Result<(), RedisError>
    where
        C: redis::aio::ConnectionLike,
    {
        self.set_hold(con, self.keys.paused(phone_number_id), for_)
            .await
    }

    async fn set_hold<C>(&self, con: &mut C, key: String, for_: Duration) -> Result<(), RedisError>
    where
        C: redis::aio::ConnectionLike,
    {
        let ms = for_.as_millis().min(u64::MAX as u128) as u64;
        if ms == 0 {
            return Ok(());
        }
        let _: i64 = self.hold.key(key).arg(ms).invoke_async(con).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_become_whole_microsecond_intervals() {
        assert_eq!(Budget::NUMBER_DEFAULT.interval_micros(), 12_500);
        assert_eq!(Budget::PAIR_DEFAULT.interval_micros(), 6_000_000);
        assert_eq!(Budget::new(3.0, 1).interval_micros(), 333_333);
        assert_eq!(Budget::new(1e9, 1).interval_micros(), 1);
        for unlimited in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(Budget::new(unlimited, 5).interval_micros(), 0);
        }
        assert_eq!(Budget::new(1.0, 0).burst(), 1);
    }

    #[test]
    fn every_key_of_a_number_shares_one_hash_tag() {
        let keys = RateLimitKeys::new("wafleet");
        let all = [
            keys.number("106"),
            keys.pair("106", "573001234567"),
            keys.paused("106"),
            keys.penalty("106", "US.1349"),
        ];
        assert_eq!(all[0], "wafleet:{rl:106}:number");
        assert_eq!(all[1], "wafleet:{rl:106}:to:573001234567");
        assert_eq!(all[2], "wafleet:{rl:106}:paused");
        assert_eq!(all[3], "wafleet:{rl:106}:penalty:US.1349");
        for key in all {
            let tag = &key[key.find('{').unwrap()..=key.find('}').unwrap()];
            assert_eq!(tag, "{rl:106}");
        }
    }
}
