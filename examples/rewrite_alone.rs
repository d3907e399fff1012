//! The rewriting engine's own limit, for `bench/rewrite.sh`: the gateway's HTML rewriter
//! (lol_html with the same handlers and link tagging the gateway uses) over the benchmark page,
//! in one thread, with nothing else around it.
//!
//! `rewrite_alone [SECONDS]` prints `pages/s MB/s`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use sessiongate::config::DEFAULT_LINKS;
use sessiongate::rewrite::{Coding, Html, Tagger};

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let page = sessiongate::demo::benchmark_page();
    let links: Vec<(String, String)> = DEFAULT_LINKS
        .iter()
        .map(|(e, a)| ((*e).to_owned(), (*a).to_owned()))
        .collect();
    let token = "A".repeat(64);
    let start = Instant::now();
    let (mut pages, mut bytes) = (0u64, 0u64);
    while start.elapsed() < Duration::from_secs_f64(secs) {
        let tagger = Tagger::new("sgsid", &token, "http", "127.0.0.1:19003", "/page").unwrap();
        let mut html = Html::new(tagger, None, &links, Coding::Identity, false);
        // The page arrives as a backend sends it: in pieces of 16 KiB.
        for chunk in page.as_bytes().chunks(16 * 1024) {
            bytes += html.feed(chunk).unwrap().len() as u64;
        }
        bytes += html.finish().unwrap().len() as u64;
        pages += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{:.1} {:.1}",
        pages as f64 / elapsed,
        page.len() as f64 * pages as f64 / elapsed / 1e6
    );
    assert!(bytes > 0);
}
