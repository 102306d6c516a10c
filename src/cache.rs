//! Validated copies of session content, kept between opens.
//!
//! A copy here is never served as is: `fs` sends its version to the store at open, and uses
//! the copy only if the store answers that the version is current. What the cache saves is the
//! transfer of the content, and (with leases, later) the round trip itself. Bounded by the sum
//! of the content sizes (`cache_size`), least recently used first out.

use std::sync::Arc;

use lru::LruCache;

use crate::keys::SessionName;

#[derive(Debug, Clone)]
pub struct Cached {
    pub version: u64,
    pub data: Arc<Vec<u8>>,
}

/// What an entry costs besides its content: the name, the map slot, the Arc.
const ENTRY_OVERHEAD: usize = 128;

pub struct ContentCache {
    lru: LruCache<SessionName, Cached>,
    bytes: usize,
    capacity: usize,
}

impl ContentCache {
    pub fn new(capacity: usize) -> ContentCache {
        ContentCache {
            // The byte bound below is what limits the cache; the entry count is left open.
            lru: LruCache::unbounded(),
            bytes: 0,
            capacity,
        }
    }

    fn cost(name: &SessionName, c: &Cached) -> usize {
        c.data.len() + name.as_str().len() + ENTRY_OVERHEAD
    }

    pub fn get(&mut self, name: &SessionName) -> Option<Cached> {
        self.lru.get(name).cloned()
    }

    pub fn put(&mut self, name: SessionName, entry: Cached) {
        self.remove(&name);
        let cost = Self::cost(&name, &entry);
        if cost > self.capacity {
            return;
        }
        while self.bytes + cost > self.capacity {
            match self.lru.pop_lru() {
                Some((n, c)) => self.bytes -= Self::cost(&n, &c),
                None => break,
            }
        }
        self.bytes += cost;
        self.lru.put(name, entry);
    }

    pub fn remove(&mut self, name: &SessionName) {
        if let Some(c) = self.lru.pop(name) {
            self.bytes -= Self::cost(name, &c);
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn entries(&self) -> usize {
        self.lru.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> SessionName {
        SessionName::parse(s.as_bytes()).unwrap()
    }

    fn entry(len: usize) -> Cached {
        Cached {
            version: 1,
            data: Arc::new(vec![b'x'; len]),
        }
    }

    #[test]
    fn stays_within_its_byte_bound() {
        let mut c = ContentCache::new(3 * (1000 + 10 + ENTRY_OVERHEAD));
        for i in 0..10 {
            c.put(name(&format!("sess_{i:05}")), entry(1000));
            assert!(c.bytes() <= 3 * (1000 + 10 + ENTRY_OVERHEAD));
        }
        assert_eq!(c.entries(), 3);
        assert!(c.get(&name("sess_00009")).is_some());
        assert!(c.get(&name("sess_00000")).is_none());
    }

    #[test]
    fn an_entry_larger_than_the_cache_is_not_kept() {
        let mut c = ContentCache::new(100);
        c.put(name("sess_a"), entry(1000));
        assert_eq!(c.entries(), 0);
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn replacing_an_entry_accounts_once() {
        let mut c = ContentCache::new(10_000);
        c.put(name("sess_a"), entry(100));
        c.put(name("sess_a"), entry(200));
        assert_eq!(c.bytes(), 200 + 6 + ENTRY_OVERHEAD);
        c.remove(&name("sess_a"));
        assert_eq!(c.bytes(), 0);
    }
}
