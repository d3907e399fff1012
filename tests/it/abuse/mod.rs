//! The abuse suite (issue 14): floods, slow and non-reading clients, HTTP/2 abuse and store
//! outages, each against a real gateway on loopback, bounded in count and time. Tests assert
//! outcomes (who was served, what reached the backend or Redis), not timings, where they can.

mod cap;
mod flood;
mod h2;
mod h2raw;
mod outage;
mod slow;
