//! The conformance suite: the contract of DESIGN §2 written once as executable cases, run by
//! every backend.
//!
//! Each case is a `pub async fn case_name(store: Arc<dyn StateStore>)` that panics when the
//! store breaks the contract. Cases are named as sentences (`update_with_a_stale_revision_conflicts`)
//! and each expects a **fresh, empty store**: a new `MemoryStore`, a new NATS bucket, a new
//! temporary directory.
//!
//! The suite adapts to the backend through [`StateStore::capabilities`]: TTLs are multiples of
//! `ttl_granularity` (at least 200 ms), the lag cases overflow `watch_buffer`, and the size cases
//! write exactly `max_value_size` bytes. It never relies on paused Tokio time, so it runs
//! unchanged against real servers; every awaited watch event has a timeout, so a broken store
//! fails a case instead of hanging it. A timing check that cannot be decided (the machine was
//! too slow to read before a TTL ran out) is retried with a longer TTL, never guessed.
//!
//! # Running it for a backend
//!
//! Add this crate to the backend's dev-dependencies (with Tokio's `macros` and
//! `rt-multi-thread` features, which the generated tests use):
//!
//! ```toml
//! [dev-dependencies]
//! swarmstate-conformance = "0.1"
//! tokio = { version = "1", features = ["macros", "rt-multi-thread"] }
//! ```
//!
//! and expand [`conformance_tests!`](crate::conformance_tests) with a factory that returns a
//! fresh store on every call (an `async fn` or a closure returning a future):
//!
//! ```no_run
//! use std::sync::Arc;
//! use swarmstate_core::{MemoryStore, StateStore};
//!
//! async fn fresh_store() -> Arc<dyn StateStore> {
//!     Arc::new(MemoryStore::new())
//! }
//!
//! swarmstate_conformance::conformance_tests!(fresh_store);
//! ```
//!
//! That expands to one `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]` per case,
//! named after the case, plus a `GENERATED_CASES` constant listing the generated names. To run
//! the suite for several configurations in one file, expand it once per module. [`CASES`] holds
//! the same cases as data (name and runner), for custom runners and for checking coverage.

use std::sync::Arc;

use futures::future::BoxFuture;

#[doc(hidden)]
pub mod __private {
    pub use swarmstate_core::StateStore;
}

use swarmstate_core::StateStore;

mod cache;
mod config;
mod election;
mod keys;
mod kv;
mod lock_wait;
mod locks;
pub mod model;
mod queue;
mod support;
mod ttl;
mod txn;
mod watch;

pub use cache::*;
pub use config::*;
pub use election::*;
pub use keys::*;
pub use kv::*;
pub use lock_wait::*;
pub use locks::*;
pub use queue::*;
pub use ttl::*;
pub use txn::*;
pub use watch::*;

/// The one list of cases. Both [`conformance_tests!`](crate::conformance_tests) and [`CASES`]
/// expand from it, so they cannot drift apart. Calls `$crate::$callback! { { context } cases }`.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($callback:ident { $($context:tt)* }) => {
        $crate::$callback! {
            { $($context)* }
            // Reads and plain writes.
            get_of_a_missing_key_is_none,
            put_then_get_returns_the_value_and_its_revision,
            overwrite_gives_a_higher_revision,
            revisions_strictly_increase_across_keys_and_are_never_zero,
            current_revision_is_the_last_change,
            delete_removes_the_key,
            delete_of_a_missing_key_returns_none_and_emits_no_event,
            delete_at_the_current_revision_succeeds,
            delete_at_a_stale_revision_conflicts_and_keeps_the_value,
            conditional_delete_of_a_missing_key_conflicts,
            // Create and update.
            create_on_an_absent_key_succeeds,
            create_on_an_existing_key_is_already_exists,
            create_after_delete_succeeds,
            update_at_the_current_revision_succeeds,
            update_with_a_stale_revision_conflicts,
            update_of_a_missing_key_conflicts,
            update_of_a_deleted_key_conflicts,
            failed_conditional_writes_change_nothing,
            concurrent_compare_and_set_increments_lose_no_update,
            concurrent_creates_have_exactly_one_winner,
            // Values.
            value_at_the_size_limit_is_accepted,
            value_over_the_size_limit_is_rejected_and_nothing_is_written,
            empty_value_is_allowed,
            binary_values_round_trip_byte_for_byte,
            // Lifecycle.
            close_ends_watch_streams,
            calls_after_close_fail_with_closed,
            // Keys and listing.
            empty_key_is_rejected_with_its_rule,
            key_over_1024_bytes_is_rejected_with_its_rule,
            key_with_an_empty_token_is_rejected_with_its_rule,
            key_with_an_invalid_character_is_rejected_with_its_rule,
            reserved_key_is_rejected_with_its_rule,
            misplaced_wildcards_in_patterns_are_rejected,
            longest_valid_key_round_trips,
            keys_with_every_allowed_character_round_trip,
            keys_star_lists_every_key_sorted_and_excludes_reserved_keys,
            keys_prefix_matches_every_depth_and_nothing_else,
            keys_exact_lists_only_that_key,
            // TTL.
            ttl_entry_is_visible_before_its_ttl_and_gone_after,
            write_without_ttl_makes_a_key_permanent,
            refresh_with_a_new_ttl_extends_life,
            expiry_emits_an_expire_event_to_watchers,
            create_after_expiry_succeeds,
            update_at_the_revision_of_an_expired_entry_conflicts,
            keys_excludes_deleted_and_expired_keys,
            ttl_of_zero_is_rejected_and_nothing_is_written,
            ttl_above_the_maximum_is_rejected_and_nothing_is_written,
            ttl_at_the_bounds_is_accepted,
            // Watch.
            watch_now_sees_only_new_events,
            watch_from_a_revision_replays_then_goes_live,
            watch_from_a_future_revision_delivers_nothing_before_it,
            watch_snapshot_gives_entries_then_caught_up_then_live,
            watch_snapshot_of_an_empty_selection_is_only_caught_up,
            watch_prefix_pattern_filters_at_every_depth,
            watch_exact_key_sees_only_that_key,
            watch_all_excludes_reserved_keys,
            watch_reports_deletes,
            every_watcher_receives_every_event,
            watch_events_arrive_in_revision_order_under_concurrent_writers,
            slow_watcher_is_lagged_and_its_stream_ends,
            lagged_watcher_resumes_from_resume_from_without_gaps,
            // Transactions and idempotency.
            txn_applies_every_write_with_consecutive_revisions,
            txn_with_one_stale_condition_applies_nothing,
            txn_error_names_the_first_failing_key,
            txn_events_are_delivered_together_and_in_order,
            txn_absent_condition_requires_an_absent_key,
            txn_check_requires_a_condition_without_writing,
            txn_delete_of_an_absent_key_reports_not_found,
            txn_with_a_duplicate_key_is_invalid_input,
            empty_txn_is_invalid_input,
            txn_with_a_value_over_the_size_limit_is_rejected_and_nothing_is_written,
            idempotent_retry_applies_once,
            idempotency_key_is_scoped_per_key,
            failed_idempotent_write_is_not_remembered,
            // Locks.
            lock_contention_reports_the_holder_and_time_left,
            expired_lock_can_be_taken_with_a_higher_token,
            refresh_after_losing_the_lock_fails_with_lock_lost,
            refresh_while_held_keeps_the_lock_and_its_token,
            release_of_a_lock_no_longer_ours_fails_and_the_new_holder_keeps_it,
            fenced_write_with_a_stale_guard_is_rejected_and_writes_nothing,
            fenced_write_while_held_succeeds,
            lock_tokens_strictly_increase_across_holders,
            release_then_reacquire_works,
            lock_with_invalid_input_is_rejected,
            keep_alive_holds_a_lock_past_its_ttl,
            keep_alive_signals_the_moment_the_lock_is_lost,
            fence_gate_refuses_a_stale_holder_after_takeover,
            // Work queue.
            enqueue_of_the_same_id_twice_is_one_item,
            queue_claim_gives_each_item_to_one_claimant,
            concurrent_claimers_complete_every_item_exactly_once,
            heartbeat_extends_a_claim_past_its_lease,
            expired_claim_is_claimable_again_and_the_stale_completion_is_rejected,
            failed_items_are_retried_until_max_attempts_then_dead_lettered,
            queue_list_reports_state_claimant_and_lease_left,
            claim_wait_wakes_for_new_work_and_returns_none_on_deadline,
            queue_rejects_invalid_input_and_changes_nothing,
            // Config watch.
            config_watch_starts_from_a_snapshot_then_applies_live_changes,
            config_watch_removes_deleted_and_expired_entries,
            config_watch_keeps_undecodable_values_out_of_the_map_and_reports_them,
            config_watch_recovers_from_a_lag_without_losing_an_update,
            config_watch_ends_with_closed_when_the_store_closes,
            // TTL cache.
            cache_miss_computes_and_a_hit_does_not,
            concurrent_cache_misses_compute_exactly_once,
            cached_value_expires_after_its_ttl_and_is_recomputed,
            failing_compute_is_not_cached_and_the_next_caller_computes,
            cache_filler_that_dies_does_not_block_others_forever,
            invalidate_removes_the_value_and_cancels_a_fill_in_flight,
            cancelled_fill_releases_its_lock_at_once,
            cache_rejects_invalid_names_and_ttls,
            blocking_acquire_of_a_free_lock_takes_it_at_once,
            blocking_acquire_waits_and_gets_the_lock_when_the_holder_releases,
            blocking_acquire_serves_waiters_in_arrival_order,
            dead_waiter_does_not_stall_the_queue,
            blocking_acquire_hits_its_deadline_with_lock_held_and_leaves_no_ticket,
            try_acquire_may_take_a_free_lock_ahead_of_queued_waiters,
            dropping_a_guard_releases_the_lock,
            blocking_acquire_under_contention_never_has_two_holders,
            // Election.
            campaign_of_a_vacant_election_wins_and_leader_reports_it,
            resign_hands_over_to_the_next_campaigner_before_the_ttl,
            terms_strictly_increase_across_leaders,
            refreshes_keep_the_term_and_are_not_reported_as_changes,
            campaign_hits_its_deadline_with_lock_held_naming_the_leader,
            deposed_leaders_fenced_writes_are_rejected_and_lost_fires,
            observe_reports_each_change_of_leader_in_order,
        }
    };
}

/// Expands to one Tokio test per conformance case, each on a fresh store from `$factory`.
///
/// `$factory` is anything callable with no arguments that returns a future of a store that
/// coerces to `Arc<dyn StateStore>`: an `async fn`, or a closure such as
/// `|| async { Arc::new(MemoryStore::new()) }`. It is called once per case and must return a
/// fresh, empty store each time. The calling crate needs `tokio` (with `macros` and
/// `rt-multi-thread`) as a dependency. Besides the tests, the expansion defines
/// `GENERATED_CASES: &[&str]`, the names of the generated tests, so a backend can check that
/// it runs every case in [`CASES`].
///
/// See the crate documentation for an example.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr $(,)?) => {
        $crate::__conformance_cases!(__conformance_tests_expand { $factory });
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests_expand {
    ({ $factory:expr } $($case:ident),* $(,)?) => {
        /// The names of the conformance cases this module runs, one test each.
        #[allow(dead_code)]
        pub(crate) const GENERATED_CASES: &[&str] = &[$(stringify!($case)),*];

        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let store: ::std::sync::Arc<dyn $crate::__private::StateStore> = ($factory)().await;
                $crate::$case(store).await;
            }
        )*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_case_list {
    ({} $($case:ident),* $(,)?) => {
        &[$(
            $crate::Case {
                name: stringify!($case),
                run: |store| ::std::boxed::Box::pin($crate::$case(store)),
            }
        ),*]
    };
}

/// One conformance case as data: its name and a function that runs it on a store.
#[derive(Clone, Copy)]
pub struct Case {
    /// The case's name, a sentence in snake case; also the generated test's name.
    pub name: &'static str,
    /// Runs the case on a fresh store; the future panics on a contract violation.
    pub run: fn(Arc<dyn StateStore>) -> BoxFuture<'static, ()>,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case").field("name", &self.name).finish()
    }
}

/// Every case of the suite, in the order [`conformance_tests!`](crate::conformance_tests)
/// generates them.
pub const CASES: &[Case] = crate::__conformance_cases!(__conformance_case_list {});
