//! Choosing a backend: weighted round robin, least connections, or session affinity
//! (weighted rendezvous hashing), skipping unavailable ones.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Balance;

/// What the balancer needs to know about each backend at the moment of choosing.
pub(crate) trait Candidate {
    fn weight(&self) -> u32;
    fn in_flight(&self) -> usize;
    fn available(&self) -> bool;
}

/// A balancer for one pool.
#[derive(Debug)]
pub(crate) struct Balancer {
    kind: Balance,
    /// Smooth weighted round-robin order, computed once: weights 5,1,1 give a,a,b,a,c,a,a
    /// rather than a,a,a,a,a,b,c, so a heavy server does not get bursts.
    schedule: Vec<usize>,
    next: AtomicUsize,
    /// Each backend's hash of its address, for rendezvous hashing: an address, not a position,
    /// so that adding a server moves only the sessions it wins.
    ids: Vec<u64>,
    /// Each backend's address (`host:port`), which a session may be pinned to.
    addresses: Vec<Box<str>>,
    /// Each backend's `route` name, if it has one.
    routes: Vec<Option<Box<str>>>,
}

/// Where a request's session wants to go, for `session_affinity`, in order: the server whose
/// `route` an application cookie names, the server the session is pinned to, the server its
/// key hashes to.
#[derive(Debug, Default)]
pub struct Affinity<'a> {
    /// The session's key (rendezvous hashing); none yet (round robin).
    pub key: Option<&'a [u8]>,
    /// The server (`host:port`) that holds the application's own session, as the session
    /// remembers it.
    pub pinned: Option<&'a [u8]>,
    /// What follows the last `.` of each application cookie's value: a server whose `route`
    /// is one of them holds that session (Tomcat's `jvmRoute`).
    pub routes: Vec<&'a [u8]>,
}

impl<'a> Affinity<'a> {
    /// Affinity by the session's key alone.
    pub fn key(key: &'a [u8]) -> Affinity<'a> {
        Affinity {
            key: Some(key),
            ..Affinity::default()
        }
    }
}

impl Balancer {
    /// A balancer for backends of `weights`, `addresses` and `routes` (in the same order).
    pub fn new(
        kind: Balance,
        weights: &[u32],
        addresses: &[&str],
        routes: &[Option<&str>],
    ) -> Self {
        Balancer {
            kind,
            schedule: smooth_schedule(weights),
            next: AtomicUsize::new(0),
            ids: addresses.iter().map(|a| fnv1a(a.as_bytes())).collect(),
            addresses: addresses.iter().map(|a| Box::from(*a)).collect(),
            routes: routes.iter().map(|r| r.map(Box::from)).collect(),
        }
    }

    /// Whether it balances by session.
    pub fn uses_affinity(&self) -> bool {
        self.kind == Balance::SessionAffinity
    }

    /// The index of the backend to use, skipping unavailable ones and those in `exclude`;
    /// `affinity` is where the request's session wants to go, for `session_affinity`.
    pub fn pick<C: Candidate>(
        &self,
        backends: &[C],
        exclude: &[usize],
        affinity: Option<&Affinity<'_>>,
    ) -> Option<usize> {
        let usable = |i: usize| !exclude.contains(&i) && backends[i].available();
        match (self.kind, affinity) {
            (Balance::SessionAffinity, Some(a)) => {
                // The application's own session first: where its cookie says it lives, or
                // where the session remembers it was made.
                let routed = (0..backends.len()).find(|&i| {
                    usable(i)
                        && self
                            .routes
                            .get(i)
                            .and_then(Option::as_deref)
                            .is_some_and(|r| a.routes.contains(&r.as_bytes()))
                });
                let pinned = || {
                    let to = a.pinned?;
                    (0..backends.len()).find(|&i| {
                        usable(i) && self.addresses.get(i).is_some_and(|x| x.as_bytes() == to)
                    })
                };
                if let Some(i) = routed.or_else(pinned) {
                    return Some(i);
                }
                let Some(key) = a.key else {
                    return self.round_robin(&usable);
                };
                // Weighted rendezvous: each server scores -weight / ln(u) with u uniform in
                // (0, 1) from hash(key, server); the highest wins. A server that becomes
                // unavailable hands its sessions to their next-best, and only those move.
                let k = fnv1a(key);
                (0..backends.len())
                    .filter(|&i| usable(i))
                    .map(|i| {
                        let h = mix(k ^ self.ids.get(i).copied().unwrap_or(0));
                        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                        (i, -f64::from(backends[i].weight()) / u.ln())
                    })
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .map(|(i, _)| i)
            }
            (Balance::RoundRobin | Balance::SessionAffinity, _) => self.round_robin(&usable),
            (Balance::LeastConnections, _) => {
                let n = backends.len();
                // Rotate the starting point so that ties do not always favour the first server.
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                let mut best: Option<usize> = None;
                for k in 0..n {
                    let i = (start + k) % n;
                    if !usable(i) {
                        continue;
                    }
                    best = match best {
                        // Fewer in flight per unit of weight: a.in/a.w < b.in/b.w.
                        Some(b)
                            if (backends[i].in_flight() as u128)
                                * u128::from(backends[b].weight())
                                >= (backends[b].in_flight() as u128)
                                    * u128::from(backends[i].weight()) =>
                        {
                            Some(b)
                        }
                        _ => Some(i),
                    };
                }
                best
            }
        }
    }
}

impl Balancer {
    /// The next server in the weighted order that is `usable`.
    fn round_robin(&self, usable: &impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.schedule.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| self.schedule[(start + k) % n])
            .find(|&i| usable(i))
    }
}

/// FNV-1a: the same on every gateway (no per-process seed), which affinity needs.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// splitmix64's finalizer: spreads FNV's output over all 64 bits.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn smooth_schedule(weights: &[u32]) -> Vec<usize> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let w: Vec<i64> = weights.iter().map(|&x| i64::from(x / g)).collect();
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        for (c, wi) in current.iter_mut().zip(&w) {
            *c += wi;
        }
        let Some((best, _)) = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, std::cmp::Reverse(*i)))
        else {
            break;
        };
        current[best] -= total;
        out.push(best);
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct B {
        w: u32,
        n: usize,
        up: bool,
    }
    impl Candidate for B {
        fn weight(&self) -> u32 {
            self.w
        }
        fn in_flight(&self) -> usize {
            self.n
        }
        fn available(&self) -> bool {
            self.up
        }
    }
    fn b(w: u32, n: usize, up: bool) -> B {
        B { w, n, up }
    }

    #[test]
    fn round_robin_follows_weights_smoothly() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[2, 2]), vec![0, 1]);
        let bal = Balancer::new(Balance::RoundRobin, &[3, 1], &["a:1", "b:1"], &[None, None]);
        let backends = [b(3, 0, true), b(1, 0, true)];
        let picks: Vec<usize> = (0..8)
            .filter_map(|_| bal.pick(&backends, &[], None))
            .collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 6);
    }

    #[test]
    fn round_robin_skips_unavailable_and_excluded() {
        let bal = Balancer::new(
            Balance::RoundRobin,
            &[1, 1, 1],
            &["a:1", "b:1", "c:1"],
            &[None; 3],
        );
        let backends = [b(1, 0, false), b(1, 0, true), b(1, 0, true)];
        for _ in 0..6 {
            assert_ne!(bal.pick(&backends, &[], None), Some(0));
        }
        assert_eq!(bal.pick(&backends, &[1], None), Some(2));
        assert_eq!(bal.pick(&backends, &[1, 2], None), None);
    }

    #[test]
    fn session_affinity_keeps_a_session_on_one_server_and_moves_only_the_lost_ones() {
        let addrs = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"];
        let bal = Balancer::new(Balance::SessionAffinity, &[1, 1, 1], &addrs, &[None; 3]);
        let all = [b(1, 0, true), b(1, 0, true), b(1, 0, true)];
        let keys: Vec<String> = (0..3000).map(|i| format!("session-{i}")).collect();
        let pick = |backends: &[B], k: &str| {
            bal.pick(backends, &[], Some(&Affinity::key(k.as_bytes())))
                .unwrap()
        };
        let first: Vec<usize> = keys.iter().map(|k| pick(&all, k)).collect();
        // Stable, and spread about evenly.
        assert_eq!(
            first,
            keys.iter().map(|k| pick(&all, k)).collect::<Vec<_>>()
        );
        for s in 0..3 {
            let n = first.iter().filter(|&&i| i == s).count();
            assert!((800..1200).contains(&n), "server {s} got {n} of 3000");
        }
        // Server 1 goes down: only its sessions move, and never to it.
        let down = [b(1, 0, true), b(1, 0, false), b(1, 0, true)];
        for (k, &was) in keys.iter().zip(&first) {
            let now = pick(&down, k);
            assert_ne!(now, 1);
            if was != 1 {
                assert_eq!(now, was, "{k} moved without cause");
            }
        }
        // A heavier server wins more sessions; without a session, round robin.
        let heavy = Balancer::new(Balance::SessionAffinity, &[3, 1, 1], &addrs, &[None; 3]);
        let weighted = [b(3, 0, true), b(1, 0, true), b(1, 0, true)];
        let n = keys
            .iter()
            .filter(|k| heavy.pick(&weighted, &[], Some(&Affinity::key(k.as_bytes()))) == Some(0))
            .count();
        assert!(n > 1500, "weight 3 of 5 won {n} of 3000");
        assert!(bal.pick(&all, &[], None).is_some());
    }

    #[test]
    fn an_application_session_goes_to_its_route_then_to_its_pin_then_by_key() {
        let addrs = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"];
        let routes = [Some("n1"), None, Some("n3")];
        let bal = Balancer::new(Balance::SessionAffinity, &[1, 1, 1], &addrs, &routes);
        let all = [b(1, 0, true), b(1, 0, true), b(1, 0, true)];
        let by_key = bal.pick(&all, &[], Some(&Affinity::key(b"k"))).unwrap();
        for (pinned, addr) in addrs.iter().enumerate() {
            let a = Affinity {
                key: Some(b"k"),
                pinned: Some(addr.as_bytes()),
                routes: Vec::new(),
            };
            assert_eq!(bal.pick(&all, &[], Some(&a)), Some(pinned));
        }
        let a = Affinity {
            key: Some(b"k"),
            pinned: Some(addrs[1].as_bytes()),
            routes: vec![b"n3"],
        };
        assert_eq!(bal.pick(&all, &[], Some(&a)), Some(2), "the route wins");
        // Its server down: the pin, then the key.
        let down = [b(1, 0, true), b(1, 0, true), b(1, 0, false)];
        assert_eq!(bal.pick(&down, &[], Some(&a)), Some(1));
        let lost = Affinity {
            key: Some(b"k"),
            pinned: Some(b"10.0.0.9:80"),
            routes: vec![b"n9"],
        };
        assert_eq!(bal.pick(&all, &[], Some(&lost)), Some(by_key));
    }

    #[test]
    fn least_connections_prefers_the_least_loaded_per_weight() {
        let bal = Balancer::new(
            Balance::LeastConnections,
            &[1, 1, 2],
            &["a:1", "b:1", "c:1"],
            &[None; 3],
        );
        let backends = [b(1, 3, true), b(1, 1, true), b(2, 3, true)];
        // 3/1, 1/1, 3/2: the second is least loaded.
        assert_eq!(bal.pick(&backends, &[], None), Some(1));
        assert_eq!(bal.pick(&backends, &[1], None), Some(2));
        let down = [b(1, 0, false), b(1, 5, true)];
        assert_eq!(bal.pick(&down, &[], None), Some(1));
    }
}
