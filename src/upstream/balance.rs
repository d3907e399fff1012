//! Choosing a backend: weighted round robin or least connections, skipping unavailable ones.

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
}

impl Balancer {
    pub fn new(kind: Balance, weights: &[u32]) -> Self {
        Balancer {
            kind,
            schedule: smooth_schedule(weights),
            next: AtomicUsize::new(0),
        }
    }

    /// The index of the backend to use, skipping unavailable ones and those in `exclude`.
    pub fn pick<C: Candidate>(&self, backends: &[C], exclude: &[usize]) -> Option<usize> {
        let usable = |i: usize| !exclude.contains(&i) && backends[i].available();
        match self.kind {
            Balance::RoundRobin => {
                let n = self.schedule.len();
                if n == 0 {
                    return None;
                }
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| self.schedule[(start + k) % n])
                    .find(|&i| usable(i))
            }
            Balance::LeastConnections => {
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
        let bal = Balancer::new(Balance::RoundRobin, &[3, 1]);
        let backends = [b(3, 0, true), b(1, 0, true)];
        let picks: Vec<usize> = (0..8).filter_map(|_| bal.pick(&backends, &[])).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 6);
    }

    #[test]
    fn round_robin_skips_unavailable_and_excluded() {
        let bal = Balancer::new(Balance::RoundRobin, &[1, 1, 1]);
        let backends = [b(1, 0, false), b(1, 0, true), b(1, 0, true)];
        for _ in 0..6 {
            assert_ne!(bal.pick(&backends, &[]), Some(0));
        }
        assert_eq!(bal.pick(&backends, &[1]), Some(2));
        assert_eq!(bal.pick(&backends, &[1, 2]), None);
    }

    #[test]
    fn least_connections_prefers_the_least_loaded_per_weight() {
        let bal = Balancer::new(Balance::LeastConnections, &[1, 1, 2]);
        let backends = [b(1, 3, true), b(1, 1, true), b(2, 3, true)];
        // 3/1, 1/1, 3/2: the second is least loaded.
        assert_eq!(bal.pick(&backends, &[]), Some(1));
        assert_eq!(bal.pick(&backends, &[1]), Some(2));
        let down = [b(1, 0, false), b(1, 5, true)];
        assert_eq!(bal.pick(&down, &[]), Some(1));
    }
}
