//! Wall-clock time for deadlines that survive a restart, read through Tokio's clock so that
//! tests on paused time stay exact.

use std::cell::Cell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// A moment on the wall clock: nanoseconds since the Unix epoch. Deadlines are kept as
/// timestamps (not as `Instant`s) so that a persisted deadline means the same after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The timestamp `nanos` nanoseconds after the Unix epoch.
    pub const fn from_nanos(nanos: u64) -> Timestamp {
        Timestamp(nanos)
    }

    /// Nanoseconds since the Unix epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// The system clock's current time (the epoch itself if the clock is set before it).
    pub fn system_now() -> Timestamp {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Timestamp(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }

    /// `self + duration`, saturating at the largest timestamp.
    pub fn saturating_add(self, duration: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(nanos(duration)))
    }

    /// `self - duration`, saturating at the epoch.
    pub fn saturating_sub(self, duration: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(nanos(duration)))
    }

    /// How long after `earlier` this is, or zero if it is not after it.
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// The time of one decision: a fixed timestamp, or a clock read once, when first needed.
///
/// Most writes need no time at all (no TTL, no idempotency key, nothing due to expire, nobody
/// watching), so the engine passes a lazy one and the clock is read only if a decision asks;
/// every later question in the same decision gets the same answer.
#[derive(Debug, Clone, Copy)]
pub enum Now<'a> {
    /// This moment.
    At(Timestamp),
    /// `clock`'s time, read at the first [`Now::get`] and kept in `read`.
    Lazy {
        /// The clock to read.
        clock: &'a Clock,
        /// The time read, once read.
        read: &'a Cell<Option<Timestamp>>,
    },
}

impl Now<'_> {
    /// The time.
    pub fn get(self) -> Timestamp {
        match self {
            Now::At(time) => time,
            Now::Lazy { clock, read } => match read.get() {
                Some(time) => time,
                None => {
                    let time = clock.now();
                    read.set(Some(time));
                    time
                }
            },
        }
    }
}

impl From<Timestamp> for Now<'static> {
    fn from(time: Timestamp) -> Self {
        Now::At(time)
    }
}

// A duration in nanoseconds, saturating; without the 128-bit arithmetic of `as_nanos`, since
// every write reads the clock.
fn nanos(duration: Duration) -> u64 {
    duration
        .as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(duration.subsec_nanos()))
}

/// The engine's clock: the wall-clock time at which it was made, advanced by Tokio's clock
/// since. Under `tokio::time::pause` it stands still and advances exactly with `advance`, so
/// TTL tests are instant and exact; in normal runs it follows the system clock from the
/// moment the store opened, without jumping when someone sets the system clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall: Timestamp,
    at: Instant,
}

impl Clock {
    /// A clock starting at the system clock's current time.
    pub fn new() -> Clock {
        Clock::starting_at(Timestamp::system_now())
    }

    /// A clock that reads `wall` now.
    pub fn starting_at(wall: Timestamp) -> Clock {
        Clock {
            wall,
            at: Instant::now(),
        }
    }

    /// The current time.
    pub fn now(&self) -> Timestamp {
        // Both directions: a clock made outside a runtime whose time is paused reads a paused
        // `now` that is earlier than its start, and differences must stay exact all the same.
        let now = Instant::now();
        match now.checked_duration_since(self.at) {
            Some(since) => self.wall.saturating_add(since),
            None => self.wall.saturating_sub(self.at.duration_since(now)),
        }
    }

    /// This clock's time for one decision, read at the first [`Now::get`] and kept in `read`.
    pub fn lazy<'a>(&'a self, read: &'a Cell<Option<Timestamp>>) -> Now<'a> {
        Now::Lazy { clock: self, read }
    }

    /// The Tokio instant at which this clock reads `time`, for sleeping until a deadline.
    pub fn instant_of(&self, time: Timestamp) -> Instant {
        if time >= self.wall {
            self.at + time.saturating_duration_since(self.wall)
        } else {
            let before = self.wall.saturating_duration_since(time);
            self.at.checked_sub(before).unwrap_or(self.at)
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_clock_advances_exactly_with_tokio_time() {
        let clock = Clock::starting_at(Timestamp::from_nanos(1_000));
        assert_eq!(clock.now(), Timestamp::from_nanos(1_000));
        tokio::time::advance(Duration::from_millis(5)).await;
        assert_eq!(clock.now(), Timestamp::from_nanos(5_001_000));
        let deadline = Timestamp::from_nanos(1_000).saturating_add(Duration::from_secs(1));
        assert_eq!(
            clock.instant_of(deadline) - Instant::now(),
            Duration::from_millis(995)
        );
        // A time before the clock's start is due at once.
        assert!(clock.instant_of(Timestamp::from_nanos(0)) <= Instant::now());
    }

    #[test]
    fn a_clock_made_before_time_was_paused_still_measures_exactly() {
        let clock = Clock::starting_at(Timestamp::from_nanos(10_000_000_000));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let first = clock.now();
            tokio::time::advance(Duration::from_secs(120)).await;
            assert_eq!(
                clock.now().saturating_duration_since(first),
                Duration::from_secs(120)
            );
        });
    }

    #[test]
    fn timestamps_saturate_instead_of_wrapping() {
        let late = Timestamp::from_nanos(u64::MAX - 1);
        assert_eq!(
            late.saturating_add(Duration::from_secs(1)).as_nanos(),
            u64::MAX
        );
        assert_eq!(
            Timestamp::from_nanos(5).saturating_duration_since(late),
            Duration::ZERO
        );
    }
}
