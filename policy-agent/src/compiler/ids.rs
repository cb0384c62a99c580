//! Stable numeric ids for things the maps refer to by number (identities, rulesets, CIDR
//! classes, endpoints, policies). An id stays with its key across compilations, so an
//! unchanged pod or policy keeps its map entries and only real changes reach the kernel.

use std::collections::{BTreeMap, BTreeSet};

/// Assigns ids from `first` upwards and recycles those of keys that disappear, once the
/// maps no longer use them.
///
/// An id a compilation stopped using may still be in the maps: until the sync of that
/// compilation succeeds, endpoints point at the old ruleset and addresses at the old
/// identity. Handed to a new key before then, the next sync would write the new key's
/// entries under the id while the old users still read it (a pod enforced by another
/// pod's rules, for the moment between the two writes). So a swept id waits in
/// `released` until [`Self::written`] says the maps are done with it.
#[derive(Clone, Debug)]
pub struct IdAllocator<K: Ord + Clone> {
    ids: BTreeMap<K, u32>,
    free: BTreeSet<u32>,
    released: BTreeSet<u32>,
    next: u32,
    seen: BTreeSet<u32>,
}

impl<K: Ord + Clone> IdAllocator<K> {
    /// An allocator whose first id is `first`.
    pub fn new(first: u32) -> Self {
        Self {
            ids: BTreeMap::new(),
            free: BTreeSet::new(),
            released: BTreeSet::new(),
            next: first,
            seen: BTreeSet::new(),
        }
    }

    /// The id of `key`, assigning one if it is new; marks it as in use by this compilation.
    pub fn id(&mut self, key: &K) -> u32 {
        let id = match self.ids.get(key) {
            Some(&id) => id,
            None => {
                let id = self.free.pop_first().unwrap_or_else(|| {
                    let id = self.next;
                    self.next += 1;
                    id
                });
                self.ids.insert(key.clone(), id);
                id
            }
        };
        self.seen.insert(id);
        id
    }

    /// Marks `id`, which a key has, as in use by this compilation (as [`Self::id`] of
    /// its key would, without comparing keys).
    pub fn touch(&mut self, id: u32) {
        self.seen.insert(id);
    }

    /// The id of `key`, if it has one (without marking it as in use).
    pub fn get(&self, key: &K) -> Option<&u32> {
        self.ids.get(key)
    }

    /// Gives `key` the id `id` (one a previous run used), unless the key has an id already
    /// or the id is taken; returns whether it did.
    pub fn reserve(&mut self, key: &K, id: u32) -> bool {
        if self.ids.contains_key(key) || self.ids.values().any(|&v| v == id) {
            return false;
        }
        self.free.remove(&id);
        self.released.remove(&id);
        self.next = self.next.max(id + 1);
        self.ids.insert(key.clone(), id);
        true
    }

    /// Assigns new ids above `id` only.
    pub fn skip_past(&mut self, id: u32) {
        self.next = self.next.max(id + 1);
        self.free.retain(|&f| f > id);
        self.released.retain(|&f| f > id);
    }

    /// Forgets keys not used since the previous call; their ids are reused once the maps
    /// are written without them ([`Self::written`]).
    pub fn sweep(&mut self) {
        let seen = std::mem::take(&mut self.seen);
        let released = &mut self.released;
        self.ids.retain(|_, id| {
            let keep = seen.contains(id);
            if !keep {
                released.insert(*id);
            }
            keep
        });
    }

    /// The maps hold what the compilations so far produced (a sync succeeded): the ids
    /// they stopped using may be reused.
    pub fn written(&mut self) {
        self.free.append(&mut self.released);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_recycled() {
        let mut ids = IdAllocator::new(10);
        assert_eq!(ids.id(&"a"), 10);
        assert_eq!(ids.id(&"b"), 11);
        ids.sweep();
        assert_eq!(ids.id(&"b"), 11, "a surviving key keeps its id");
        ids.sweep();
        ids.written();
        assert_eq!(ids.id(&"c"), 10, "the id of a vanished key is reused");
        assert_eq!(ids.id(&"a"), 12);
    }

    #[test]
    fn an_id_is_reused_only_once_the_maps_are_written_without_it() {
        let mut ids = IdAllocator::new(1);
        assert_eq!(ids.id(&"old"), 1);
        ids.sweep();
        ids.written();
        // "old" is gone from this compilation, whose sync fails: the maps still use 1.
        ids.sweep();
        assert_eq!(
            ids.id(&"new"),
            2,
            "an id the maps may still use was handed out"
        );
        ids.sweep();
        ids.written();
        assert_eq!(ids.id(&"newer"), 1);
    }

    #[test]
    fn reserved_ids_are_kept_and_never_handed_out_twice() {
        let mut ids = IdAllocator::new(1);
        assert!(ids.reserve(&"old", 7));
        assert!(!ids.reserve(&"other", 7), "the id is taken");
        assert!(!ids.reserve(&"old", 8), "the key has its id");
        assert_eq!(ids.id(&"old"), 7);
        assert_eq!(ids.id(&"new"), 8);
        ids.skip_past(20);
        assert_eq!(ids.id(&"newer"), 21);
    }
}
