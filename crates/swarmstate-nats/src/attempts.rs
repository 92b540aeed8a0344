//! How long a request keeps trying while the server refuses it, and how it waits between tries.

use std::time::{Duration, Instant};

use crate::error::{ApiError, NatsError};

/// Paces the attempts of one request whose writes or barriers the server refuses: it gives up
/// once the request timeout has passed since it began, and waits (1 ms, doubling to 50 ms)
/// only after a refusal because another write to the subject was in flight, which says
/// nothing about the subject's state; any other refusal is answered by reading again at once.
#[derive(Debug)]
pub(crate) struct Attempts {
    give_up: Instant,
    pause: Duration,
}

impl Attempts {
    pub(crate) fn new(timeout: Duration) -> Attempts {
        Attempts {
            give_up: Instant::now() + timeout,
            pause: Duration::from_millis(1),
        }
    }

    /// When the request gives up.
    pub(crate) fn give_up(&self) -> Instant {
        self.give_up
    }

    pub(crate) fn expired(&self) -> bool {
        Instant::now() >= self.give_up
    }

    /// Waits a moment if `refused` was only because of a write in flight.
    pub(crate) async fn pause_if_in_flight(&mut self, refused: &ApiError) {
        if refused.is_in_flight() {
            self.pause().await;
        }
    }

    /// Waits a moment, longer each time.
    pub(crate) async fn pause(&mut self) {
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(Duration::from_millis(50));
    }

    /// After a refusal: [`NatsError::NotApplied`] (every attempt was refused) with `gave_up()`'s
    /// message and the refusal once the time is up; otherwise
    /// [`pause_if_in_flight`](Self::pause_if_in_flight).
    pub(crate) async fn after(
        &mut self,
        refused: &ApiError,
        gave_up: impl FnOnce() -> String,
    ) -> Result<(), NatsError> {
        if self.expired() {
            return Err(NatsError::NotApplied {
                message: format!("{}: {}", gave_up(), refused.description),
            });
        }
        self.pause_if_in_flight(refused).await;
        Ok(())
    }
}
