//! The watchers of one engine: who wants which keys, and handing them each change.

use crate::feed::WatchFeed;
use crate::{Pattern, Revision, WatchEvent};

#[derive(Debug, Default)]
pub(super) struct Hub {
    watchers: Vec<Watcher>,
}

#[derive(Debug)]
struct Watcher {
    pattern: Pattern,
    feed: WatchFeed,
    // Changes below this revision are not delivered: a watch from a revision the store has not
    // reached yet starts there.
    from: Option<Revision>,
}

impl Hub {
    pub(super) fn is_empty(&self) -> bool {
        self.watchers.is_empty()
    }

    pub(super) fn register(&mut self, pattern: Pattern, feed: WatchFeed, from: Option<Revision>) {
        self.watchers.push(Watcher {
            pattern,
            feed,
            from,
        });
    }

    /// Hands `events` (in revision order) to every watcher they select. A watcher whose buffer
    /// overflows gets its lag signal from the feed and is dropped here.
    pub(super) fn dispatch(&mut self, events: &[WatchEvent]) {
        if events.is_empty() || self.watchers.is_empty() {
            return;
        }
        self.watchers.retain(|watcher| {
            for event in events {
                let selected = event.key().is_some_and(|key| watcher.pattern.matches(key))
                    && watcher
                        .from
                        .is_none_or(|from| event.revision() >= Some(from));
                if !selected {
                    continue;
                }
                let resume = event.revision().expect("changes carry revisions");
                if watcher.feed.send(event.clone(), resume).is_err() {
                    return false;
                }
            }
            true
        });
    }

    /// Drops every watcher: their streams end once their buffered events are read.
    pub(super) fn clear(&mut self) {
        self.watchers.clear();
    }
}
