//! The checkers, run on a finished run's records:
//!
//! - no acknowledged write lost: every item a cart client added with an acknowledged write is
//!   in the cart's final union; an acknowledged blind value is in the final state unless a
//!   later or concurrent write on the key may have superseded it;
//! - no deleted (or superseded) value resurrected: a value that an acknowledged write's
//!   context covered (the write's client read it) is not in the final state;
//! - converged: every key's home replicas hold the same versions, and the ring is settled,
//!   within the bound after the workload (all faults healed);
//! - no value nobody wrote: every value read, and every final value, was written by a client;
//! - siblings bounded by the concurrent writers: never more siblings than the key's writers
//!   plus the writes that did not supersede their own client's previous write (one that failed
//!   or whose outcome is unknown, or one whose context missed that write).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use ringkv_core::VersionSet;

use super::workload::CART_KEYS;

#[derive(Debug, Clone)]
pub enum WriteOutcome {
    Ok,
    /// Failed or timed out: it may or may not be stored.
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct WriteRecord {
    pub key: String,
    pub client: String,
    /// `None`: a delete.
    pub value: Option<Bytes>,
    pub invoked: Duration,
    pub ended: Duration,
    pub outcome: WriteOutcome,
    /// The values of the read whose context the write carried (empty for a blind write).
    pub covered: Vec<Bytes>,
    /// Whether the write superseded its client's previous write on the key.
    pub sees_own_previous: bool,
}

#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub key: String,
    pub client: String,
    pub values: Vec<Bytes>,
    pub siblings: usize,
}

#[derive(Debug, Default)]
pub struct Records {
    pub writes: Vec<WriteRecord>,
    pub reads: Vec<ReadRecord>,
    pub finals: BTreeMap<String, Option<VersionSet>>,
    pub converged_after: Option<Duration>,
    pub not_converged: Option<String>,
}

/// The items of a cart value (`client#seq|item,item`).
pub fn cart_items(value: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(value);
    match text.split_once('|') {
        Some((_, items)) if !items.is_empty() => items.split(',').map(str::to_string).collect(),
        _ => Vec::new(),
    }
}

fn show(value: &[u8]) -> String {
    String::from_utf8_lossy(value).into_owned()
}

/// Every violation the records show.
pub fn check(records: &Records, bound: Duration) -> Vec<String> {
    let mut violations = Vec::new();
    if let Some(why) = &records.not_converged {
        violations.push(format!(
            "replicas did not converge within {}s of healing: {why}",
            bound.as_secs()
        ));
    }
    let finals: BTreeMap<&str, Vec<Bytes>> = records
        .finals
        .iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                v.as_ref()
                    .map(|v| v.values().cloned().collect())
                    .unwrap_or_default(),
            )
        })
        .collect();
    let written: BTreeSet<&Bytes> = records
        .writes
        .iter()
        .filter_map(|w| w.value.as_ref())
        .collect();

    // No value nobody wrote.
    for r in &records.reads {
        for v in &r.values {
            if !written.contains(v) {
                violations.push(format!(
                    "{} read a value nobody wrote from {}: {}",
                    r.client,
                    r.key,
                    show(v)
                ));
            }
        }
    }
    for (key, values) in &finals {
        for v in values {
            if !written.contains(v) {
                violations.push(format!("{key} holds a value nobody wrote: {}", show(v)));
            }
        }
    }

    // No acknowledged write lost.
    for key in CART_KEYS {
        let have: BTreeSet<String> = finals
            .get(key)
            .map(|vs| vs.iter().flat_map(|v| cart_items(v)).collect())
            .unwrap_or_default();
        for w in records
            .writes
            .iter()
            .filter(|w| w.key == *key && matches!(w.outcome, WriteOutcome::Ok))
        {
            let Some(value) = &w.value else { continue };
            let Some((head, _)) = show(value)
                .split_once('|')
                .map(|(h, t)| (h.to_string(), t.to_string()))
            else {
                continue;
            };
            let item = head.replacen('#', ".", 1);
            if !have.contains(&item) {
                violations.push(format!(
                    "acknowledged write lost: item {item} of {key} (written {}ms, acknowledged {}ms) is not in the final cart",
                    w.invoked.as_millis(),
                    w.ended.as_millis()
                ));
            }
        }
    }
    for w in records
        .writes
        .iter()
        .filter(|w| !CART_KEYS.contains(&w.key.as_str()) && matches!(w.outcome, WriteOutcome::Ok))
    {
        let Some(value) = &w.value else { continue };
        let present = finals
            .get(w.key.as_str())
            .is_some_and(|vs| vs.contains(value));
        let superseded = records
            .writes
            .iter()
            .any(|o| o.key == w.key && !std::ptr::eq(o, w) && o.ended > w.invoked);
        if !present && !superseded {
            violations.push(format!(
                "acknowledged write lost: {} of {} (acknowledged {}ms, nothing written on the key after it) is not in the final state",
                show(value),
                w.key,
                w.ended.as_millis()
            ));
        }
    }

    // No deleted or superseded value resurrected.
    for w in records
        .writes
        .iter()
        .filter(|w| matches!(w.outcome, WriteOutcome::Ok))
    {
        for v in &w.covered {
            if finals.get(w.key.as_str()).is_some_and(|vs| vs.contains(v)) {
                violations.push(format!(
                    "resurrected: {} of {} came back after {}'s acknowledged {} at {}ms covered it",
                    show(v),
                    w.key,
                    w.client,
                    if w.value.is_some() { "write" } else { "delete" },
                    w.invoked.as_millis()
                ));
            }
        }
    }

    // Siblings bounded by the concurrent writers.
    let mut writers: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for w in &records.writes {
        writers
            .entry(w.key.as_str())
            .or_default()
            .insert(w.client.as_str());
    }
    let mut bound_of: BTreeMap<&str, usize> = writers.iter().map(|(k, w)| (*k, w.len())).collect();
    for w in &records.writes {
        let concurrent = matches!(w.outcome, WriteOutcome::Failed(_)) || !w.sees_own_previous;
        if concurrent {
            *bound_of.entry(w.key.as_str()).or_default() += 1;
        }
    }
    let siblings = records
        .reads
        .iter()
        .map(|r| (r.key.as_str(), r.siblings, r.client.as_str()))
        .chain(records.finals.iter().map(|(k, v)| {
            (
                k.as_str(),
                v.as_ref().map(|v| v.siblings().len()).unwrap_or(0),
                "the final state",
            )
        }));
    for (key, count, who) in siblings {
        let limit = bound_of.get(key).copied().unwrap_or(0);
        if count > limit {
            violations.push(format!(
                "{who} saw {count} siblings of {key}, more than its {limit} concurrent writers"
            ));
        }
    }
    violations
}
