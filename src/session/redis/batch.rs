//! Reads of concurrent requests sent to Redis together (auto-pipelining).
//!
//! Sent one by one, each request's `HMGET` is a write on the gateway's socket and a read, a
//! command and a write in Redis: under load, these system calls (on both ends of loopback or
//! a LAN) cost far more than the command itself. So a read joins a queue instead; the read
//! that finds the queue empty spawns a flush, which yields once (tokio runs it again only
//! after every task that was ready has run and the I/O driver has been polled), so that
//! every request the gateway has ready joins the queue before the flush sends them all as
//! one pipeline. With nothing else ready, the yield costs a turn of the scheduler.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::{RedisError, RedisResult, Value};
use tokio::sync::oneshot;

use super::conn::Conn;
use crate::deadline::TimerPool;

/// Where a read's answer goes.
type Answer = oneshot::Sender<RedisResult<Value>>;

/// One read waiting for its flush: the command, and where its answer goes.
type Waiting = (redis::Cmd, Answer);

fn answer_all(answers: Vec<Answer>, e: &RedisError) {
    for tx in answers {
        let _ = tx.send(Err(e.clone()));
    }
}

/// The reads waiting for the next flush on one connection.
pub(super) struct Batcher {
    queue: Mutex<Vec<Waiting>>,
    /// A flush gives up after this long, as each read does: a frozen Redis must not keep
    /// flushes (and their batches) alive after their requests have gone.
    timeout: Duration,
    timers: TimerPool,
}

impl Batcher {
    /// A batcher whose flushes wait at most `timeout` for Redis.
    pub(super) fn new(timeout: Duration) -> Batcher {
        Batcher {
            queue: Mutex::default(),
            timeout,
            timers: TimerPool::default(),
        }
    }

    /// Sends `cmd` on `conn` with whatever other commands are ready, and returns its reply.
    ///
    /// A command that fails fails its whole pipeline: this is for reads that fail only as
    /// the connection or the server does (`HMGET` on keys the store alone writes).
    pub(super) async fn query(
        self: &Arc<Self>,
        conn: &Conn,
        cmd: redis::Cmd,
    ) -> RedisResult<Value> {
        let (tx, rx) = oneshot::channel();
        let first = {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            queue.push((cmd, tx));
            queue.len() == 1
        };
        if first {
            // A task of its own: the flush must not depend on this request's future, which
            // is dropped when its client goes away or its operation times out.
            tokio::spawn(self.clone().flush(conn.clone()));
        }
        rx.await.unwrap_or_else(|_| {
            Err(RedisError::from((
                redis::ErrorKind::Io,
                "the batch carrying this read was dropped",
            )))
        })
    }

    /// Waits one turn of the scheduler, then sends every queued command as one pipeline.
    async fn flush(self: Arc<Self>, mut conn: Conn) {
        tokio::task::yield_now().await;
        let batch = std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner));
        let mut pipe = redis::pipe();
        let mut answers = Vec::with_capacity(batch.len());
        for (cmd, tx) in batch {
            pipe.add_command(cmd);
            answers.push(tx);
        }
        let sent = self
            .timers
            .within(self.timeout, pipe.query_async::<Vec<Value>>(&mut conn))
            .await;
        let replies = match sent.unwrap_or_else(|_| {
            Err(RedisError::from((
                redis::ErrorKind::Io,
                "no answer within the operation timeout",
            )))
        }) {
            Ok(replies) if replies.len() == answers.len() => replies,
            Ok(replies) => {
                let e = RedisError::from((
                    redis::ErrorKind::Client,
                    "a pipeline answered with the wrong number of replies",
                    format!("{} for {} commands", replies.len(), answers.len()),
                ));
                return answer_all(answers, &e);
            }
            Err(e) => return answer_all(answers, &e),
        };
        for (tx, reply) in answers.into_iter().zip(replies) {
            // A receiver gone (its request timed out) is no one's loss.
            let _ = tx.send(Ok(reply));
        }
    }
}
