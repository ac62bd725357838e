//! The client's copy of the partition table (`GET /ring`), and the lookup of a key's home
//! replicas in it.
//!
//! Laws: a `RingView` is only built from a table that covers every partition `0..Q` in order
//! with at least one owner each, and Q is a power of two; so `home_replicas` never fails for
//! any key. The partition of a key is computed exactly as the nodes compute it
//! (`ringkv_core::PartitionId::of(key_hash(key), Q)`), so a client and a node holding the
//! same ring version agree on every key's preference list.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ringkv_core::{PartitionId, key_hash};
use serde_json::Value;

use crate::Error;

/// One ring, as a node published it.
#[derive(Debug, Clone)]
pub struct RingView {
    version: u64,
    n: u32,
    partitions: u32,
    /// Owners (node ids) of partition `i`, in preference-list order.
    table: Vec<Vec<String>>,
    /// Each member's client HTTP base URL (`http://ip:port`), when the node knew it.
    members: BTreeMap<String, Option<String>>,
}

impl RingView {
    /// Parses the `/ring` JSON. `via_host` is the host of the URL it was fetched from: a
    /// member that advertises an unspecified address (`0.0.0.0:port`) is reached there.
    pub fn parse(json: &Value, via_host: Option<&str>) -> Result<RingView, Error> {
        let bad = |what: &str| Error::Protocol(format!("/ring answer: {what}: {json:.200}"));
        let version = json["version"].as_u64().ok_or_else(|| bad("no version"))?;
        let n = json["n"].as_u64().ok_or_else(|| bad("no n"))? as u32;
        let partitions = json["partitions"]
            .as_u64()
            .filter(|q| *q > 0 && q.is_power_of_two() && *q <= u32::MAX as u64)
            .ok_or_else(|| bad("partitions is not a power of two"))?
            as u32;
        let mut members = BTreeMap::new();
        for m in json["members"]
            .as_array()
            .ok_or_else(|| bad("no members"))?
        {
            let id = m["node_id"].as_str().ok_or_else(|| bad("member id"))?;
            let url = m["http"].as_str().map(|a| base_url(a, via_host));
            members.insert(id.to_string(), url);
        }
        let rows = json["table"].as_array().ok_or_else(|| bad("no table"))?;
        if rows.len() != partitions as usize {
            return Err(bad("table does not have Q rows"));
        }
        let mut table = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            if row["partition"].as_u64() != Some(i as u64) {
                return Err(bad("table rows out of order"));
            }
            let owners: Vec<String> = row["owners"]
                .as_array()
                .ok_or_else(|| bad("row without owners"))?
                .iter()
                .filter_map(|o| o.as_str().map(str::to_string))
                .collect();
            if owners.is_empty() {
                return Err(bad("a partition has no owner"));
            }
            table.push(owners);
        }
        Ok(RingView {
            version,
            n,
            partitions,
            table,
            members,
        })
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// N, replicas per key.
    pub fn n(&self) -> u32 {
        self.n
    }

    /// Q, the number of partitions.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The home replicas of `key`, first (the preferred coordinator) first.
    pub fn home_replicas(&self, key: &[u8]) -> &[String] {
        let p = PartitionId::of(key_hash(key), self.partitions);
        &self.table[p.index() as usize]
    }

    /// The HTTP base URL of member `id`, if known.
    pub fn url_of(&self, id: &str) -> Option<&str> {
        self.members.get(id).and_then(|u| u.as_deref())
    }

    /// Every member with a known HTTP URL, by node id.
    pub fn member_urls(&self) -> impl Iterator<Item = (&str, &str)> {
        self.members
            .iter()
            .filter_map(|(id, url)| url.as_deref().map(|u| (id.as_str(), u)))
    }
}

/// `ip:port` as advertised by a node, turned into a base URL this client can reach.
fn base_url(advertised: &str, via_host: Option<&str>) -> String {
    match (advertised.parse::<SocketAddr>(), via_host) {
        (Ok(addr), Some(host)) if addr.ip().is_unspecified() => {
            format!("http://{host}:{}", addr.port())
        }
        _ => format!("http://{advertised}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Value {
        json!({
            "version": 7, "n": 2, "partitions": 2,
            "members": [
                {"node_id": "a", "zone": "z", "weight": 1, "http": "127.0.0.1:1"},
                {"node_id": "b", "zone": "z", "weight": 1, "http": "0.0.0.0:2"},
                {"node_id": "c", "zone": "z", "weight": 1, "http": null},
            ],
            "table": [
                {"partition": 0, "first_hash": "0", "owners": ["a", "b"]},
                {"partition": 1, "first_hash": "8", "owners": ["b", "c"]},
            ],
        })
    }

    #[test]
    fn parses_and_routes_by_the_top_hash_bit() {
        let ring = RingView::parse(&sample(), Some("example.test")).unwrap();
        assert_eq!(ring.version(), 7);
        assert_eq!(ring.n(), 2);
        // MD5("") = d41d8cd9...: the top bit is 1, so partition 1.
        assert_eq!(ring.home_replicas(b""), ["b", "c"]);
        assert_eq!(ring.url_of("a"), Some("http://127.0.0.1:1"));
        assert_eq!(ring.url_of("b"), Some("http://example.test:2"));
        assert_eq!(ring.url_of("c"), None);
        assert_eq!(ring.member_urls().count(), 2);
    }

    #[test]
    fn rejects_incomplete_tables() {
        let mut j = sample();
        j["table"].as_array_mut().unwrap().pop();
        assert!(matches!(RingView::parse(&j, None), Err(Error::Protocol(_))));
        let mut j = sample();
        j["partitions"] = json!(3);
        assert!(matches!(RingView::parse(&j, None), Err(Error::Protocol(_))));
        let mut j = sample();
        j["table"][1]["owners"] = json!([]);
        assert!(matches!(RingView::parse(&j, None), Err(Error::Protocol(_))));
    }
}
