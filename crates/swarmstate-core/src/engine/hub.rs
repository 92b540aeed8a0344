//! The watchers of one store: who wants which keys, and handing them each change. The engine
//! keeps one; a backend with its own change feed (NATS) keeps one per connection, so that a
//! change costs the same whatever the number of watches it does not select.
//!
//! Watchers are indexed by pattern, so handing out a change costs in proportion to the
//! watchers it selects and the depth of its key, not to the number of watchers: an exact
//! watcher is found by its key, a prefix watcher by looking up each token prefix of the
//! changed key (`a`, `a.b` for `a.b.c`), and `*` watchers are kept apart.

use std::collections::HashMap;

use crate::feed::WatchFeed;
use crate::{Key, Pattern, Revision, WatchEvent};

type Index = HashMap<Key, Vec<usize>, foldhash::fast::RandomState>;

/// Watchers indexed by pattern. Not synchronized: its owner serializes registration and
/// dispatch (the engine under its state lock, so that a registration sees every change after
/// the revision it names).
#[derive(Debug, Default)]
pub struct Hub {
    // Invariant: every `Some` slot's index is listed exactly once, under its pattern, in
    // `all`, `exact` or `prefixes`; `free` lists exactly the `None` slots.
    slots: Vec<Option<Watcher>>,
    free: Vec<usize>,
    all: Vec<usize>,
    exact: Index,
    prefixes: Index,
    // How many slots are `Some`, and how many were when closed watchers were last swept.
    live: usize,
    swept_at: usize,
}

#[derive(Debug)]
struct Watcher {
    pattern: Pattern,
    feed: WatchFeed,
    // Changes below this revision are not delivered: a watch from a revision the store has not
    // reached yet starts there.
    from: Option<Revision>,
}

// Below this many watchers a sweep for closed ones is not worth it.
const SWEEP_FLOOR: usize = 64;

impl Hub {
    /// Whether no watcher is registered.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// How many watchers are registered (including ones whose stream was dropped and that no
    /// change has selected since).
    pub fn len(&self) -> usize {
        self.live
    }

    /// Adds a watcher of `pattern`: it gets every change [`dispatch`](Self::dispatch)ed from
    /// now on that its pattern selects, from revision `from` on if given.
    pub fn register(&mut self, pattern: Pattern, feed: WatchFeed, from: Option<Revision>) {
        // A watcher whose stream was dropped is found when a change selects it; one that no
        // change selects would stay forever, so closed watchers are swept whenever the hub
        // has doubled since the last sweep (amortized O(1) per registration).
        if self.live >= SWEEP_FLOOR && self.live >= 2 * self.swept_at {
            self.sweep();
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        match &pattern {
            Pattern::All => self.all.push(slot),
            Pattern::Exact(key) => self.exact.entry(key.clone()).or_default().push(slot),
            Pattern::Prefix(prefix) => self.prefixes.entry(prefix.clone()).or_default().push(slot),
        }
        self.slots[slot] = Some(Watcher {
            pattern,
            feed,
            from,
        });
        self.live += 1;
    }

    /// Hands `events` (in revision order) to every watcher they select. A watcher whose buffer
    /// overflows gets its lag signal from the feed and is dropped here, before any later
    /// event, so what it got is a prefix of what it asked for.
    pub fn dispatch(&mut self, events: &[WatchEvent]) {
        if events.is_empty() || self.live == 0 {
            return;
        }
        let mut ended = Vec::new();
        for event in events {
            let Some(key) = event.key() else { continue };
            let resume = event.revision().expect("changes carry revisions");
            let Hub {
                slots,
                all,
                exact,
                prefixes,
                ..
            } = self;
            let mut deliver = |selected: &[usize]| {
                for &slot in selected {
                    let Some(watcher) = &slots[slot] else {
                        continue;
                    };
                    if watcher.from.is_some_and(|from| resume < from) {
                        continue;
                    }
                    if watcher.feed.send(event.clone(), resume).is_err() {
                        ended.push((slots[slot].take().expect("checked above"), slot));
                    }
                }
            };
            if !key.is_reserved() {
                deliver(all);
            }
            if let Some(selected) = exact.get(key) {
                deliver(selected);
            }
            let text = key.as_str();
            for (at, _) in text.match_indices('.') {
                if let Some(selected) = prefixes.get(&text[..at]) {
                    deliver(selected);
                }
            }
        }
        for (watcher, slot) in ended {
            self.unlist(&watcher.pattern, slot);
        }
    }

    /// Drops every watcher: their streams end once their buffered events are read.
    pub fn clear(&mut self) {
        *self = Hub::default();
    }

    /// Ends every watch with `Lagged`: the source missed the change at `first_missing` and
    /// cannot say whose it was. A watcher that starts later resumes from its own start.
    pub fn lag_all(&mut self, first_missing: Revision) {
        for watcher in self.slots.drain(..).flatten() {
            let resume_from = watcher
                .from
                .map_or(first_missing, |from| from.max(first_missing));
            watcher.feed.lag(resume_from);
        }
        *self = Hub::default();
    }

    // Drops the watchers whose streams were dropped.
    fn sweep(&mut self) {
        for slot in 0..self.slots.len() {
            let closed = self.slots[slot]
                .as_ref()
                .is_some_and(|watcher| watcher.feed.is_closed());
            if closed {
                let watcher = self.slots[slot].take().expect("checked above");
                self.unlist(&watcher.pattern, slot);
            }
        }
        self.swept_at = self.live;
    }

    // Forgets `slot`, already emptied, under `pattern`.
    fn unlist(&mut self, pattern: &Pattern, slot: usize) {
        match pattern {
            Pattern::All => forget(&mut self.all, slot),
            Pattern::Exact(key) => forget_under(&mut self.exact, key, slot),
            Pattern::Prefix(prefix) => forget_under(&mut self.prefixes, prefix, slot),
        }
        self.free.push(slot);
        self.live -= 1;
    }
}

fn forget(list: &mut Vec<usize>, slot: usize) {
    let at = list.iter().position(|&s| s == slot).expect("listed once");
    list.swap_remove(at);
}

// Forgets `slot` under `key`, and the key once nobody is listed under it.
fn forget_under(index: &mut Index, key: &Key, slot: usize) {
    let list = index.get_mut(key).expect("listed under its pattern");
    forget(list, slot);
    if list.is_empty() {
        index.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use futures::{FutureExt, StreamExt};

    use super::*;
    use crate::WatchStream;
    use crate::feed::watch_feed;

    fn delete(key: &str, revision: u64) -> WatchEvent {
        WatchEvent::Delete {
            key: Key::new_reserved(key).unwrap(),
            revision: Revision::new(revision).unwrap(),
        }
    }

    fn watch(hub: &mut Hub, pattern: &str, from: Option<u64>, buffer: usize) -> WatchStream {
        let (feed, stream) = watch_feed(buffer);
        let from = from.map(|n| Revision::new(n).unwrap());
        hub.register(Pattern::new(pattern).unwrap(), feed, from);
        stream
    }

    // The keys of what `stream` holds now, without waiting.
    fn received(stream: &mut WatchStream) -> Vec<String> {
        let mut keys = Vec::new();
        while let Some(Some(event)) = stream.next().now_or_never() {
            keys.push(match event {
                WatchEvent::Lagged { resume_from } => format!("lagged at {resume_from}"),
                event => event.key().expect("a change").to_string(),
            });
        }
        keys
    }

    #[test]
    fn each_watcher_gets_exactly_the_changes_its_pattern_selects() {
        let mut hub = Hub::default();
        let mut every = watch(&mut hub, "*", None, 64);
        let mut under_a = watch(&mut hub, "a.*", None, 64);
        let mut under_ab = watch(&mut hub, "a.b.*", None, 64);
        let mut exact = watch(&mut hub, "a.b", None, 64);
        let mut reserved = watch(&mut hub, "_locks.*", None, 64);
        let keys = [
            "a", "a.b", "a.b.c", "a-b.c", "a/b", "ab.c", "b.a", "_locks.x",
        ];
        let events: Vec<_> = (1..).zip(keys).map(|(n, key)| delete(key, n)).collect();
        hub.dispatch(&events);
        let all: Vec<_> = keys[..7].iter().map(|k| k.to_string()).collect();
        assert_eq!(received(&mut every), all);
        assert_eq!(received(&mut under_a), ["a.b", "a.b.c"]);
        assert_eq!(received(&mut under_ab), ["a.b.c"]);
        assert_eq!(received(&mut exact), ["a.b"]);
        assert_eq!(received(&mut reserved), ["_locks.x"]);
    }

    #[test]
    fn a_watch_from_a_future_revision_starts_there() {
        let mut hub = Hub::default();
        let mut stream = watch(&mut hub, "a.*", Some(3), 64);
        let events: Vec<_> = (1..=4).map(|n| delete(&format!("a.k{n}"), n)).collect();
        hub.dispatch(&events);
        assert_eq!(received(&mut stream), ["a.k3", "a.k4"]);
    }

    #[test]
    fn a_lagging_watcher_gets_nothing_after_its_lag_and_leaves_the_others_alone() {
        let mut hub = Hub::default();
        let mut slow = watch(&mut hub, "a.*", None, 1);
        let mut other = watch(&mut hub, "a.*", None, 64);
        let events: Vec<_> = (1..=3).map(|n| delete(&format!("a.k{n}"), n)).collect();
        hub.dispatch(&events);
        assert_eq!(hub.live, 1, "the lagging watcher is dropped");
        assert_eq!(received(&mut slow), ["a.k1", "lagged at 2"]);
        assert_eq!(received(&mut other), ["a.k1", "a.k2", "a.k3"]);
        // Its slot is reused without mixing the two up.
        let mut next = watch(&mut hub, "b.*", None, 64);
        hub.dispatch(&[delete("a.k4", 4), delete("b.k5", 5)]);
        assert_eq!(received(&mut other), ["a.k4"]);
        assert_eq!(received(&mut next), ["b.k5"]);
    }

    #[test]
    fn lagging_all_ends_every_watch_where_it_must_resume() {
        let mut hub = Hub::default();
        let mut early = watch(&mut hub, "a.*", None, 64);
        let mut late = watch(&mut hub, "b.*", Some(9), 64);
        hub.dispatch(&[delete("a.k1", 1)]);
        hub.lag_all(Revision::new(5).unwrap());
        assert!(hub.is_empty());
        assert_eq!(received(&mut early), ["a.k1", "lagged at 5"]);
        assert_eq!(received(&mut late), ["lagged at 9"]);
    }

    #[test]
    fn dropped_watchers_that_nothing_selects_are_swept_as_the_hub_grows() {
        let mut hub = Hub::default();
        let mut kept = watch(&mut hub, "kept", None, 64);
        for n in 0..10 * SWEEP_FLOOR {
            drop(watch(&mut hub, &format!("gone{n}.*"), None, 64));
        }
        assert!(
            hub.live <= 2 * SWEEP_FLOOR,
            "{} watchers kept; no more than twice the floor should be",
            hub.live
        );
        let listed: usize = hub.all.len()
            + hub.exact.values().map(Vec::len).sum::<usize>()
            + hub.prefixes.values().map(Vec::len).sum::<usize>();
        assert_eq!(listed, hub.live, "swept watchers are unlisted");
        assert_eq!(hub.free.len() + hub.live, hub.slots.len());
        hub.dispatch(&[delete("kept", 1)]);
        assert_eq!(received(&mut kept), ["kept"]);
    }
}
