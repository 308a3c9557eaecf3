//! Per-sender quotas on state that remote input creates.
//!
//! Everything the core keeps because somebody sent something (early candidates, remembered
//! ended calls, early media keys, mesh invites waiting for a membership, busy replies) lives in a
//! [`PerSender`] map: bounded per sender **and** in total, with a rule for who pays when it is
//! full. A sender over its own quota loses its own oldest entry; when the whole map is full, the
//! sender holding the most entries loses its oldest one. So one sender flooding can only ever
//! evict its own entries (until as many senders as the total quota allows are involved), and no
//! sender can grow the map without bound. Entries also expire on a deadline the core's timers
//! fire.

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::{Timestamp, UserId};

/// Bounds of a [`PerSender`] map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Quota {
    /// Most entries one sender may hold.
    pub(crate) per_sender: usize,
    /// Most entries in all.
    pub(crate) total: usize,
}

#[derive(Debug)]
struct Entry<V> {
    sender: UserId,
    expires_at: Timestamp,
    seq: u64,
    value: V,
}

/// What [`PerSender::insert`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Admitted<K> {
    /// Stored without evicting anything.
    Stored,
    /// Stored; this entry of the same sender was evicted to make room.
    EvictedOwn(K),
    /// Stored; this entry of the sender holding the most entries was evicted.
    EvictedOther(K),
}

/// A map whose entries belong to the remote sender that caused them (see the module docs).
#[derive(Debug)]
pub(crate) struct PerSender<K: Ord + Clone, V> {
    quota: Quota,
    entries: BTreeMap<K, Entry<V>>,
    /// Each sender's keys, oldest first.
    by_sender: BTreeMap<UserId, BTreeSet<(u64, K)>>,
    next_seq: u64,
}

impl<K: Ord + Clone, V> PerSender<K, V> {
    /// An empty map with these bounds (each at least 1).
    pub(crate) fn new(quota: Quota) -> Self {
        let quota = Quota { per_sender: quota.per_sender.max(1), total: quota.total.max(1) };
        PerSender { quota, entries: BTreeMap::new(), by_sender: BTreeMap::new(), next_seq: 0 }
    }

    /// Number of entries.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The most entries any one sender holds.
    #[cfg(feature = "testing")]
    pub(crate) fn max_per_sender(&self) -> usize {
        self.by_sender.values().map(BTreeSet::len).max().unwrap_or(0)
    }

    /// The bounds.
    #[cfg(feature = "testing")]
    pub(crate) fn quota(&self) -> Quota {
        self.quota
    }

    /// Number of entries (all senders).
    #[cfg(feature = "testing")]
    pub(crate) fn total(&self) -> usize {
        self.entries.len()
    }

    /// Entries held for `sender`.
    pub(crate) fn count_of(&self, sender: &UserId) -> usize {
        self.by_sender.get(sender).map_or(0, BTreeSet::len)
    }

    /// The entry under `key`, with its sender.
    pub(crate) fn get(&self, key: &K) -> Option<(&UserId, &V)> {
        self.entries.get(key).map(|e| (&e.sender, &e.value))
    }

    /// The entry under `key`, mutably, with its sender.
    pub(crate) fn get_mut(&mut self, key: &K) -> Option<(&UserId, &mut V)> {
        self.entries.get_mut(key).map(|e| (&e.sender, &mut e.value))
    }

    /// Whether `key` is held.
    pub(crate) fn contains_key(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// Stores `value` under `key` for `sender` until `expires_at`, replacing any entry under the
    /// same key, evicting by the quota rules when needed.
    pub(crate) fn insert(&mut self, key: K, sender: UserId, expires_at: Timestamp, value: V) -> Admitted<K> {
        self.remove(&key);
        let mut admitted = Admitted::Stored;
        if self.count_of(&sender) >= self.quota.per_sender {
            if let Some(k) = self.oldest_of(&sender) {
                self.remove(&k);
                admitted = Admitted::EvictedOwn(k);
            }
        } else if self.entries.len() >= self.quota.total {
            let heaviest = self
                .by_sender
                .iter()
                .max_by_key(|(u, keys)| (keys.len(), *u == &sender))
                .map(|(u, _)| u.clone());
            if let Some(k) = heaviest.and_then(|u| self.oldest_of(&u)) {
                self.remove(&k);
                admitted = Admitted::EvictedOther(k);
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_sender.entry(sender.clone()).or_default().insert((seq, key.clone()));
        self.entries.insert(key, Entry { sender, expires_at, seq, value });
        admitted
    }

    fn oldest_of(&self, sender: &UserId) -> Option<K> {
        self.by_sender.get(sender).and_then(|s| s.iter().next()).map(|(_, k)| k.clone())
    }

    /// Removes and returns the entry under `key`, with its sender.
    pub(crate) fn remove(&mut self, key: &K) -> Option<(UserId, V)> {
        let e = self.entries.remove(key)?;
        if let Some(keys) = self.by_sender.get_mut(&e.sender) {
            keys.remove(&(e.seq, key.clone()));
            if keys.is_empty() {
                self.by_sender.remove(&e.sender);
            }
        }
        Some((e.sender, e.value))
    }

    /// Drops every entry that expired at or before `now`.
    pub(crate) fn expire(&mut self, now: Timestamp) {
        let gone: Vec<K> =
            self.entries.iter().filter(|(_, e)| e.expires_at <= now).map(|(k, _)| k.clone()).collect();
        for k in gone {
            self.remove(&k);
        }
    }

    /// The earliest expiry.
    pub(crate) fn next_expiry(&self) -> Option<Timestamp> {
        self.entries.values().map(|e| e.expires_at).min()
    }

    /// Removes and returns every entry matching `pick`, in insertion order, with its expiry.
    pub(crate) fn take_where_until(
        &mut self,
        mut pick: impl FnMut(&K, &UserId, &V) -> bool,
    ) -> Vec<(K, UserId, V, Timestamp)> {
        let mut keys: Vec<(u64, K, Timestamp)> = self
            .entries
            .iter()
            .filter(|(k, e)| pick(k, &e.sender, &e.value))
            .map(|(k, e)| (e.seq, k.clone(), e.expires_at))
            .collect();
        keys.sort_by_key(|(seq, _, _)| *seq);
        keys.into_iter().filter_map(|(_, k, until)| self.remove(&k).map(|(s, v)| (k, s, v, until))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(n: u32) -> UserId {
        UserId::from(format!("@u{n}:x").as_str())
    }

    #[test]
    fn a_flooding_sender_only_evicts_its_own_entries() {
        let mut m: PerSender<u32, ()> = PerSender::new(Quota { per_sender: 4, total: 16 });
        m.insert(0, u(0), Timestamp(100), ());
        for k in 1..1000 {
            m.insert(k, u(1), Timestamp(100), ());
        }
        assert!(m.contains_key(&0), "the other sender's entry survives the flood");
        assert_eq!(m.count_of(&u(1)), 4);
        assert_eq!(m.len(), 5);
    }

    #[test]
    fn when_full_the_heaviest_sender_pays() {
        let mut m: PerSender<u32, ()> = PerSender::new(Quota { per_sender: 8, total: 10 });
        m.insert(0, u(0), Timestamp(100), ());
        m.insert(1, u(1), Timestamp(100), ());
        // Many senders with two entries each, and one with eight.
        for k in 2..10 {
            m.insert(k, u(2), Timestamp(100), ());
        }
        assert_eq!(m.len(), 10);
        assert_eq!(m.insert(10, u(3), Timestamp(100), ()), Admitted::EvictedOther(2));
        assert!(m.contains_key(&0) && m.contains_key(&1) && m.contains_key(&10));
        assert_eq!(m.len(), 10);
    }

    #[test]
    fn expiry_and_take() {
        let mut m: PerSender<u32, &str> = PerSender::new(Quota { per_sender: 8, total: 8 });
        m.insert(1, u(1), Timestamp(10), "a");
        m.insert(2, u(2), Timestamp(20), "b");
        m.insert(3, u(1), Timestamp(30), "c");
        assert_eq!(m.next_expiry(), Some(Timestamp(10)));
        m.expire(Timestamp(10));
        assert!(!m.contains_key(&1));
        let taken = m.take_where_until(|_, s, _| *s == u(1));
        assert_eq!(taken, vec![(3, u(1), "c", Timestamp(30))]);
        assert_eq!(m.count_of(&u(1)), 0);
        assert_eq!(m.len(), 1);
    }
}
