//! What happens to sessions, as it happens: created, regenerated, destroyed (a logout),
//! expired, revoked (the admin API, or a user ending their other sessions) and evicted
//! (`max_per_subject`). Each event names the session by its stable key and subject, never by
//! its token or store id.
//!
//! Events go three ways: to the admin API's event stream (`GET /events`, a broadcast that a
//! slow reader falls behind on, never holds up), to other gateways (with Redis, each gateway
//! publishes its own and relays the others', see `redis::event_channel`), and to this
//! gateway's open tunnels (WebSockets) of the session, which look again at once whether their
//! session still lives (see [`Events::watch`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Notify, broadcast};

use super::store::unix_ms;

/// Events the stream holds for a reader that falls behind, before it misses some.
const BACKLOG: usize = 4096;

/// Over how long the tunnels poked all at once look at their sessions (a store that every
/// open WebSocket asks at the same instant would be a burst of its own making).
const SPREAD_MS: u64 = 2000;

/// What happened to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A backend's first `Set` made it.
    Created,
    /// It got a new token (a login).
    Regenerated,
    /// The backend ended it (a logout).
    Destroyed,
    /// A request found it past its idle or absolute timeout.
    Expired,
    /// The admin API ended it, or its user did from another of their sessions
    /// (`X-Session-Action: end-others`).
    Revoked,
    /// A login past `max_per_subject` ended it.
    Evicted,
}

impl EventKind {
    /// The name the stream and the metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "created",
            EventKind::Regenerated => "regenerated",
            EventKind::Destroyed => "destroyed",
            EventKind::Expired => "expired",
            EventKind::Revoked => "revoked",
            EventKind::Evicted => "evicted",
        }
    }

    /// Whether a tunnel opened with the session must look again whether it lives.
    fn ends_something(self) -> bool {
        !matches!(self, EventKind::Created)
    }
}

/// One event, as the stream and other gateways get it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// What happened (see [`EventKind::as_str`]).
    pub event: String,
    /// The session's stable key.
    pub key: String,
    /// Its subject, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The gateway where it happened.
    pub gateway: String,
    /// The route whose response made it happen, if a response did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// When (Unix ms).
    pub at_ms: u64,
}

/// Longest field a relayed event may carry (anything longer is not one of ours).
const MAX_FIELD: usize = 512;

impl Event {
    /// Whether an event that came from elsewhere (another gateway, through Redis) is sane
    /// enough to pass on: a known kind, and short fields.
    pub fn well_formed(&self) -> bool {
        const KINDS: [&str; 6] = [
            "created",
            "regenerated",
            "destroyed",
            "expired",
            "revoked",
            "evicted",
        ];
        let short = |s: &str| s.len() <= MAX_FIELD;
        KINDS.contains(&self.event.as_str())
            && short(&self.key)
            && short(&self.gateway)
            && self.subject.as_deref().is_none_or(short)
            && self.route.as_deref().is_none_or(short)
    }
}

/// One watching tunnel: its serial (to leave the list by) and what pokes it.
type Watcher = (u64, Arc<Notify>);

/// The events of one gateway: the stream, and the tunnels waiting on their sessions. Kept
/// across reloads (streams and tunnels outlive a configuration).
#[derive(Debug)]
pub struct Events {
    stream: broadcast::Sender<Arc<Event>>,
    gateway: Arc<str>,
    /// By session key: the tunnels opened with it.
    watched: Mutex<HashMap<String, Vec<Watcher>>>,
    next_watch: AtomicU64,
    /// Until when (Unix ms) a poke of every tunnel is being spread out (see
    /// [`Watch::spread`]).
    spreading_until: AtomicU64,
}

impl Events {
    /// Events of the gateway named `gateway`.
    pub fn new(gateway: &str) -> Arc<Events> {
        let (stream, _) = broadcast::channel(BACKLOG);
        Arc::new(Events {
            stream,
            gateway: Arc::from(gateway),
            watched: Mutex::default(),
            next_watch: AtomicU64::new(0),
            spreading_until: AtomicU64::new(0),
        })
    }

    /// This gateway's name in events: the host's name and a random tag (several gateways may
    /// share a host).
    pub fn default_gateway_name() -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "gateway".to_owned());
        let mut tag = [0u8; 3];
        let _ = aws_lc_rs::rand::fill(&mut tag);
        format!("{host}-{:02x}{:02x}{:02x}", tag[0], tag[1], tag[2])
    }

    /// This gateway's name.
    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// Events from now on (a reader that falls more than the backlog behind misses some,
    /// and is told how many).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.stream.subscribe()
    }

    /// Something happened here: the stream gets it, and the session's tunnels look again.
    /// The event, if anyone reads it: a reader of the stream, or `others` (other gateways).
    /// (A login is the request path: with nobody to tell, no event is made.)
    pub fn emit(
        &self,
        kind: EventKind,
        key: &str,
        subject: Option<&str>,
        route: Option<&str>,
        others: bool,
    ) -> Option<Arc<Event>> {
        if kind.ends_something() {
            self.poke(key);
        }
        if !others && self.stream.receiver_count() == 0 {
            return None;
        }
        let event = Arc::new(Event {
            event: kind.as_str().to_owned(),
            key: key.to_owned(),
            subject: subject.map(str::to_owned),
            gateway: self.gateway.to_string(),
            route: route.map(str::to_owned),
            at_ms: unix_ms(),
        });
        // No reader: nobody is watching the stream, which is fine.
        let _ = self.stream.send(event.clone());
        Some(event)
    }

    /// Something happened on another gateway.
    pub fn arrived(&self, event: Event) {
        if event.event != EventKind::Created.as_str() {
            self.poke(&event.key);
        }
        let _ = self.stream.send(Arc::new(event));
    }

    /// Whether anyone reads the stream now.
    pub fn has_readers(&self) -> bool {
        self.stream.receiver_count() > 0
    }

    /// Events may have been missed (the channel from other gateways was down): every tunnel
    /// looks again.
    pub fn poke_all(&self) {
        self.spreading_until
            .store(unix_ms().saturating_add(SPREAD_MS), Ordering::Relaxed);
        let watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        for n in watched.values().flatten() {
            n.1.notify_one();
        }
    }

    fn poke(&self, key: &str) {
        let watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        for n in watched.get(key).into_iter().flatten() {
            n.1.notify_one();
        }
    }

    /// A tunnel opened with the session of `key`: poked whenever something may have ended
    /// that session, here or on another gateway, until the [`Watch`] is dropped.
    pub fn watch(self: &Arc<Self>, key: &str) -> Watch {
        let serial = self.next_watch.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        self.watched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.to_owned())
            .or_default()
            .push((serial, notify.clone()));
        Watch {
            events: self.clone(),
            key: key.to_owned(),
            serial,
            notify,
        }
    }

    /// Tunnels being watched (for tests and metrics).
    pub fn watching(&self) -> usize {
        self.watched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(Vec::len)
            .sum()
    }
}

/// A tunnel's place among the watched: poked (see [`Watch::poked`]) when its session may
/// have ended; dropped with the tunnel.
#[derive(Debug)]
pub struct Watch {
    events: Arc<Events>,
    key: String,
    serial: u64,
    notify: Arc<Notify>,
}

impl Watch {
    /// Waits for a poke (one that came while nobody waited counts too).
    pub async fn poked(&self) {
        self.notify.notified().await;
    }

    /// After a poke of every tunnel: how long this one waits before it looks (a random part
    /// of what is left of the spread); nothing after a poke of its own session.
    pub fn spread(&self) -> Option<std::time::Duration> {
        let left = self
            .events
            .spreading_until
            .load(Ordering::Relaxed)
            .saturating_sub(unix_ms());
        if left == 0 {
            return None;
        }
        let mut r = [0u8; 2];
        aws_lc_rs::rand::fill(&mut r).ok()?;
        Some(std::time::Duration::from_millis(
            u64::from(u16::from_le_bytes(r)) % left,
        ))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut watched = self
            .events
            .watched
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(list) = watched.get_mut(&self.key) {
            list.retain(|(s, _)| *s != self.serial);
            if list.is_empty() {
                watched.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_ending_event_pokes_the_sessions_tunnels_and_no_others() {
        let events = Events::new("gw");
        let mine = events.watch("k1");
        let other = events.watch("k2");
        let mut stream = events.subscribe();
        events.emit(EventKind::Revoked, "k1", Some("alice"), None, false);
        tokio::time::timeout(std::time::Duration::from_secs(1), mine.poked())
            .await
            .unwrap();
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), other.poked())
                .await
                .is_err()
        );
        let got = stream.recv().await.unwrap();
        assert_eq!((got.event.as_str(), got.key.as_str()), ("revoked", "k1"));
        assert_eq!(events.watching(), 2);
        drop((mine, other));
        assert_eq!(events.watching(), 0);
    }

    #[test]
    fn a_relayed_event_must_look_like_ours() {
        let mut e = Event {
            event: "revoked".into(),
            key: "k".into(),
            subject: None,
            gateway: "g".into(),
            route: None,
            at_ms: 1,
        };
        assert!(e.well_formed());
        e.event = "pwned".into();
        assert!(!e.well_formed());
        e.event = "created".into();
        e.key = "x".repeat(MAX_FIELD + 1);
        assert!(!e.well_formed());
    }
}
