//! `trusted_proxies:` — the peers whose `X-Forwarded-*` headers (and PROXY protocol headers)
//! are believed.

use super::error::Problems;
use super::node::Node;
use super::reader::{list, string};

/// Reads the `trusted_proxies:` list at `node`: networks in CIDR notation, or bare addresses.
pub(super) fn read(node: &Node, path: &str, p: &mut Problems) -> Vec<ipnet::IpNet> {
    let Some(items) = list(node, path, p) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let ip = format!("{path}[{i}]");
        let Some(s) = string(item, &ip, p) else {
            continue;
        };
        let s = s.trim();
        // A bare address is a network of one.
        let parsed = s
            .parse::<ipnet::IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => out.push(net),
            Err(_) => p.push(
                item.pos,
                &ip,
                format!("bad network {s:?}: write an address or CIDR, e.g. 10.0.0.0/8"),
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{BASE, problems};

    #[test]
    fn trusted_proxies_must_be_networks() {
        let errs = problems(&format!(
            "{BASE}trusted_proxies: [ 10.0.0.0/8, 192.168.1.7, bogus ]\n"
        ));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains("trusted_proxies[2]: bad network"),
            "{errs:?}"
        );
    }
}
