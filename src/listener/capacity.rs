//! The connection cap, shared by listeners, and the connections under it.
//!
//! A full gateway does not leave a new client waiting in the accept queue behind connections
//! that hold a place and do nothing (slowloris: a request head trickled a byte at a time, or
//! an idle keep-alive): it takes the place of the connection that has waited longest without
//! a request in service, preferring one that never completed a request head. A client that
//! sends its request at once is then served within moments, however many slow ones keep
//! reconnecting.

use std::sync::{Arc, Mutex, Weak};

use rustc_hash::FxHashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::conn::{Conn, End};

/// Places for client connections, and who holds them.
#[derive(Debug)]
pub struct Capacity {
    places: Arc<Semaphore>,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    next: u64,
    conns: FxHashMap<u64, Weak<Conn>>,
}

/// A connection's entry under the cap; it leaves the register when dropped.
#[derive(Debug)]
pub struct Registered {
    capacity: Arc<Capacity>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut held) = self.capacity.held.lock() {
            held.conns.remove(&self.id);
        }
    }
}

impl Capacity {
    /// `limit` places.
    pub fn new(limit: usize) -> Arc<Capacity> {
        Arc::new(Capacity {
            places: Arc::new(Semaphore::new(limit)),
            held: Mutex::new(Held::default()),
        })
    }

    /// A free place now, if there is one.
    pub fn try_place(&self) -> Option<OwnedSemaphorePermit> {
        self.places.clone().try_acquire_owned().ok()
    }

    /// The next free place (`None` once closed).
    pub async fn place(&self) -> Option<OwnedSemaphorePermit> {
        self.places.clone().acquire_owned().await.ok()
    }

    /// Enters `conn` in the register, for as long as the returned entry lives.
    pub fn register(self: &Arc<Self>, conn: &Arc<Conn>) -> Registered {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        held.next += 1;
        let id = held.next;
        held.conns.insert(id, Arc::downgrade(conn));
        Registered {
            capacity: self.clone(),
            id,
        }
    }

    /// Ends the connection that has waited longest without a request in service, preferring
    /// one that has never completed a request head. `false` if every connection is busy.
    pub fn reclaim(&self) -> bool {
        let Ok(held) = self.held.lock() else {
            return false;
        };
        // (served before, waiting since): never-served first, then the longest waiting.
        let victim = held
            .conns
            .values()
            .filter_map(|w| {
                let c = w.upgrade()?;
                let key = c.waiting_since()?;
                Some((key, c))
            })
            .min_by_key(|(key, _)| *key);
        drop(held);
        match victim {
            Some((_, conn)) => {
                conn.end(End::Close("reclaimed"));
                true
            }
            None => false,
        }
    }
}
