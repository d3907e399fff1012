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
    /// gateways' tunnels at most their next look at their session).
    pub fn publish_event(&self, event: &Event) {
        let Ok(json) = serde_json::to_string(event) else {
            return;
        };
        if self.0.wire.circuit.is_open() {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
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
            loop {
                let heard = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listen(&connector, &channel, &into) => r,
                };
                if let Err(e) = heard {
                    tracing::debug!(error = %e, "session events from other gateways: subscription lost");
                }
                let Some(events) = into.upgrade() else { return };
                events.poke_all();
                drop(events);
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
) -> redis::RedisResult<()> {
    let client = connector.pubsub_client().await?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    // Subscribed again after a loss: what was said meanwhile is lost, so every tunnel looks.
    if let Some(events) = into.upgrade() {
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
