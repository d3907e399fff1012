//! Session events between gateways: each gateway publishes its own on `PREFIX events` (JSON,
//! see `session::events::Event`), and relays the others' into its own stream, where they
//! reach the admin API's event stream and the tunnels of the sessions they name. Pub/sub
//! reaches every node of a Cluster, and loses what is said while a subscriber is away: when
//! the subscription comes back, every tunnel looks again whether its session lives.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use super::RedisStore;
use super::conn::Connector;
use crate::session::events::{Event, Events};

/// Longest event message read from the channel (anything longer is not one of ours).
const MAX_MESSAGE: usize = 4096;

/// Most events waiting for Redis to answer again (beyond them, an event is dropped: other
/// gateways' tunnels then find their session's end at their next look, within 30 s).
const MAX_WAITING: usize = 10_000;

/// How long an event waits for Redis to answer again.
const WAIT_FOR_REDIS: Duration = Duration::from_secs(120);

/// Events waiting now.
static WAITING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The relay of one store: started once, stopped when the store goes.
#[derive(Default)]
pub(super) struct Relay {
    started: AtomicBool,
    stop: CancellationToken,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// `PREFIX events`.
fn channel(prefix: &str) -> String {
    format!("{prefix}events")
}

impl RedisStore {
    /// Tells other gateways of `event` (in the background: a lost event costs the other
    /// gateways' tunnels at most their next look at their session). While Redis does not
    /// answer, the event waits for it (a logout queued with `serve_stale` is told once it
    /// is replayed), a bounded number of them for a bounded time.
    pub fn publish_event(&self, event: &Event) {
        let Ok(json) = serde_json::to_string(event) else {
            return;
        };
        let store = self.clone();
        tokio::spawn(async move {
            if store.0.wire.circuit.is_open() {
                if WAITING.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING {
                    WAITING.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
                let deadline = tokio::time::Instant::now() + WAIT_FOR_REDIS;
                while store.0.wire.circuit.is_open() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                WAITING.fetch_sub(1, Ordering::AcqRel);
                // The replay that follows a reopened circuit goes first.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let channel = channel(&store.0.wire.prefix);
            let sent: Result<i64, _> = store
                .0
                .wire
                .retried(|mut conn| {
                    let (channel, json) = (&channel, &json);
                    async move { conn.publish(channel, json).await }
                })
                .await;
            if let Err(e) = sent {
                tracing::debug!(error = %e, "session event not published");
            }
        });
    }

    /// Relays other gateways' events into `events`, from now until this store goes (once per
    /// store: a reload that keeps the store keeps its relay).
    pub fn relay_events(&self, events: &Arc<Events>) {
        let relay = &self.0.relay;
        if relay.started.swap(true, Ordering::Relaxed) {
            return;
        }
        let stop = relay.stop.clone();
        let connector = self.0.wire.connector.clone();
        let channel = channel(&self.0.wire.prefix);
        let into = Arc::downgrade(events);
        tokio::spawn(async move {
            let mut again = false;
            loop {
                let heard = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listen(&connector, &channel, &into, again) => r,
                };
                again = true;
                if let Err(e) = heard {
                    tracing::debug!(error = %e, "session events from other gateways: subscription lost");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }
}

/// One subscription: events passed on until it is lost (or `into` goes).
async fn listen(
    connector: &Connector,
    channel: &str,
    into: &Weak<Events>,
    again: bool,
) -> redis::RedisResult<()> {
    let client = connector.pubsub_client().await?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    // Subscribed again after a loss: what was said meanwhile is lost, so every tunnel looks.
    if again && let Some(events) = into.upgrade() {
        events.poke_all();
    }
    let mut messages = pubsub.on_message();
    while let Some(msg) = messages.next().await {
        let Some(events) = into.upgrade() else {
            return Ok(());
        };
        let payload = msg.get_payload_bytes();
        if payload.len() > MAX_MESSAGE {
            continue;
        }
        match serde_json::from_slice::<Event>(payload) {
            Ok(e) if e.well_formed() && e.gateway != events.gateway() => events.arrived(e),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "a session event that does not read: ignored"),
        }
    }
    Ok(())
}
