//! The metrics of the store operations the request path makes: each one's time, and
//! whether it failed.

use crate::metrics::{Metrics, StoreOpMetrics};

/// The metrics of each store operation the request path makes.
pub(super) struct StoreOps {
    pub(super) load: StoreOpMetrics,
    pub(super) update: StoreOpMetrics,
    pub(super) delete: StoreOpMetrics,
    pub(super) rename: StoreOpMetrics,
    pub(super) alias: StoreOpMetrics,
    pub(super) put_code: StoreOpMetrics,
    pub(super) take_code: StoreOpMetrics,
}

impl StoreOps {
    pub(super) fn new(metrics: &Metrics, kind: &'static str) -> StoreOps {
        let op = |name| metrics.store_operation(kind, name);
        StoreOps {
            load: op("load"),
            update: op("update"),
            delete: op("delete"),
            rename: op("rename"),
            alias: op("alias"),
            put_code: op("put_code"),
            take_code: op("take_code"),
        }
    }
}

/// Awaits a store operation, noting its time and whether it failed. A macro, not an async
/// fn wrapping the operation's future: such a wrapper holds the future twice (as its argument
/// and as its local), which grew every request's future by about 2 KiB, and hyper moves that
/// future into place once per request.
macro_rules! timed_op {
    ($metrics:expr, $op:expr) => {{
        let started = std::time::Instant::now();
        let result = $op.await;
        $metrics.record(started.elapsed(), result.is_err());
        result
    }};
}

pub(super) use timed_op as timed;
