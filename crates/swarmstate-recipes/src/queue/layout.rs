//! Where a queue keeps its items: `<queue>.<slot>.<id>`. Every key of the recipe is built here
//! from a [`Slot`] and an id, and every listed key is parsed back here, so a misspelt slot is a
//! compile error and no caller counts offsets into a key.

use swarmstate_core::{Key, Pattern, Result};

/// One of the keys an item has; its token follows the queue's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    /// `Q.item.<id>`: the item record, the authority on the item's state.
    Item,
    /// `Q.payload.<id>`: the payload, written once by `enqueue`.
    Payload,
    /// `Q.pending.<id>`: empty; present while the item waits to be claimed.
    Pending,
    /// `Q.claimed.<id>`: empty; present while the item's record says claimed.
    Claimed,
    /// `Q.lease.<id>`: the claimant's name, with the lease as its TTL.
    Lease,
}

impl Slot {
    /// Every slot, in the order of the layout table in the module doc.
    #[cfg(test)]
    const ALL: [Slot; 5] = [
        Slot::Item,
        Slot::Payload,
        Slot::Pending,
        Slot::Claimed,
        Slot::Lease,
    ];

    /// A slot whose token no other slot's is longer: if an id's key in it fits the key length
    /// limit, so do all the item's keys.
    const LONGEST: Slot = Slot::Payload;

    fn token(self) -> &'static str {
        match self {
            Slot::Item => "item",
            Slot::Payload => "payload",
            Slot::Pending => "pending",
            Slot::Claimed => "claimed",
            Slot::Lease => "lease",
        }
    }

    fn parse(token: &str) -> Option<Slot> {
        Some(match token {
            "item" => Slot::Item,
            "payload" => Slot::Payload,
            "pending" => Slot::Pending,
            "claimed" => Slot::Claimed,
            "lease" => Slot::Lease,
            _ => return None,
        })
    }
}

/// The keys of one queue, all under its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Layout {
    name: Key,
}

impl Layout {
    pub(super) fn new(name: Key) -> Layout {
        Layout { name }
    }

    /// The queue's name: the prefix of all its keys.
    pub(super) fn name(&self) -> &Key {
        &self.name
    }

    /// The key of `id` in `slot`: `<name>.<slot>.<id>`.
    ///
    /// Errors: [`Error::InvalidKey`](swarmstate_core::Error::InvalidKey) when that is no valid
    /// key (an id with characters a key may not hold, or too long).
    pub(super) fn key(&self, slot: Slot, id: &str) -> Result<Key> {
        Key::new(format!("{}.{}.{id}", self.name, slot.token()))
    }

    /// Checks that every key of `id` fits the key length limit. Errors as for
    /// [`key`](Layout::key), naming the key in the longest slot.
    pub(super) fn check_fits(&self, id: &str) -> Result<()> {
        self.key(Slot::LONGEST, id).map(drop)
    }

    /// Every key in `slot` (an index, or every record or lease): `<name>.<slot>.*`.
    ///
    /// Errors: [`Error::InvalidKey`](swarmstate_core::Error::InvalidKey) for a queue name too
    /// long to have keys in the slot.
    pub(super) fn slot(&self, slot: Slot) -> Result<Pattern> {
        Ok(Pattern::prefix(&Key::new(format!(
            "{}.{}",
            self.name,
            slot.token()
        ))?))
    }

    /// Whether `key` lies under the queue's name, in the layout or not: an operation a caller
    /// adds to the queue's own transactions must not touch one.
    pub(super) fn owns(&self, key: &Key) -> bool {
        Pattern::prefix(&self.name).matches(key)
    }

    /// Every key of the queue, for a watch.
    pub(super) fn all(&self) -> Pattern {
        Pattern::prefix(&self.name)
    }

    /// The slot and item id of `key`, or `None` if it is not of the form `<name>.<slot>.<id>`
    /// with an id of one token: not one of this queue's keys, or one written around the recipe.
    pub(super) fn parse<'k>(&self, key: &'k Key) -> Option<(Slot, &'k str)> {
        let rest = key
            .as_str()
            .strip_prefix(self.name.as_str())?
            .strip_prefix('.')?;
        let (slot, id) = rest.split_once('.')?;
        let slot = Slot::parse(slot)?;
        (!id.is_empty() && !id.contains('.')).then_some((slot, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout::new(Key::new("jobs.eu").unwrap())
    }

    #[test]
    fn every_key_parses_back_into_its_slot_and_id() {
        let layout = layout();
        for slot in Slot::ALL {
            let key = layout.key(slot, "resize-42").unwrap();
            assert_eq!(key.as_str(), format!("jobs.eu.{}.resize-42", slot.token()));
            assert_eq!(layout.parse(&key), Some((slot, "resize-42")));
            assert!(layout.slot(slot).unwrap().matches(&key));
            assert!(layout.owns(&key));
            assert_eq!(Slot::parse(slot.token()), Some(slot));
        }
    }

    #[test]
    fn keys_outside_the_layout_do_not_parse() {
        let layout = layout();
        for text in [
            "jobs.eu",
            "jobs.eu.item",
            "jobs.eu.items.a",
            "jobs.eu.item.a.b",
            "jobs.eual.item.a",
            "jobs.item.a",
            "other.eu.item.a",
        ] {
            let key = Key::new(text).unwrap();
            assert_eq!(layout.parse(&key), None, "{text}");
        }
        assert!(!layout.owns(&Key::new("jobs.eual.item.a").unwrap()));
        assert!(layout.owns(&Key::new("jobs.eu.item.a.b").unwrap()));
    }

    #[test]
    fn the_longest_slot_is_as_long_as_any() {
        let longest = Slot::LONGEST.token().len();
        assert!(Slot::ALL.iter().all(|slot| slot.token().len() <= longest));
    }
}
