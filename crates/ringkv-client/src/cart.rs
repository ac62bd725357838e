//! The Dynamo shopping cart (Dynamo §4.4): concurrent writers add items to one cart through
//! different nodes, each with a read-modify-write that carries the read's context, and
//! every sibling a read returns is merged by set union. The law checked at the end: every
//! item whose add was acknowledged is in the final cart ("add to cart" is never lost),
//! whatever the interleaving of the writers.
//!
//! Used by `examples/cart.rs` and by the crate's integration tests.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;

use crate::{Client, Error, ReadOptions, Routing, WriteOptions};

/// Most read-modify-write attempts for one item before it is given up as indeterminate.
const MAX_ADD_ATTEMPTS: u32 = 5;
/// Pause before retrying an add that met `Unavailable`, times the attempt number.
const RETRY_BACKOFF: Duration = Duration::from_millis(50);

/// The shape of one cart run.
#[derive(Debug, Clone)]
pub struct CartConfig {
    pub cart_key: Vec<u8>,
    /// Concurrent writer tasks; writer `i` uses client `i % clients.len()`.
    pub writers: usize,
    pub items_per_writer: usize,
    /// Options of the final read that is checked.
    pub final_read: ReadOptions,
}

/// What a cart run observed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CartReport {
    /// Adds acknowledged by the cluster (or seen in a later read of their own writer).
    pub acknowledged: usize,
    /// Adds that never got an answer after every retry: may or may not be in the cart.
    pub indeterminate: usize,
    /// Most siblings one read returned during the run (concurrency made visible).
    pub max_siblings: usize,
    /// Items in the final cart.
    pub final_items: usize,
    /// Acknowledged items missing from the final cart: must be empty.
    pub lost: Vec<String>,
}

/// The cart as stored: its items, one per line, sorted.
pub fn encode(items: &BTreeSet<String>) -> Bytes {
    Bytes::from(items.iter().cloned().collect::<Vec<_>>().join("\n"))
}

/// The union of the items of every sibling.
pub fn merge(values: &[Bytes]) -> BTreeSet<String> {
    values
        .iter()
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// One `Routing::AnyNode` client pinned to each member of the cluster reachable through
/// `seeds`, so that writers go through different coordinators.
pub async fn clients_for_every_node(seeds: &[&str]) -> Result<Vec<Client>, Error> {
    let probe = Client::connect(seeds).await?;
    let mut clients = Vec::new();
    for (_, url) in probe.member_urls() {
        let client = Client::builder(&[url.as_str()])
            .routing(Routing::AnyNode)
            .connect()
            .await?;
        clients.push(client);
    }
    if clients.is_empty() {
        clients.push(probe);
    }
    Ok(clients)
}

/// Runs the writers concurrently, then reads the cart and checks it.
pub async fn run(clients: &[Client], config: &CartConfig) -> Result<CartReport, Error> {
    assert!(!clients.is_empty(), "the cart needs at least one client");
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..config.writers {
        let client = clients[w % clients.len()].clone();
        let key = config.cart_key.clone();
        let items = config.items_per_writer;
        tasks.spawn(async move { writer(client, key, w, items).await });
    }
    let mut report = CartReport::default();
    let mut acknowledged = BTreeSet::new();
    while let Some(joined) = tasks.join_next().await {
        let outcome = joined.expect("a cart writer panicked")?;
        acknowledged.extend(outcome.acknowledged);
        report.indeterminate += outcome.indeterminate;
        report.max_siblings = report.max_siblings.max(outcome.max_siblings);
    }
    let cart = match clients[0].get(&config.cart_key, config.final_read).await {
        Ok(v) => {
            report.max_siblings = report.max_siblings.max(v.values.len());
            merge(&v.values)
        }
        Err(Error::NotFound { .. }) => BTreeSet::new(),
        Err(e) => return Err(e),
    };
    report.acknowledged = acknowledged.len();
    report.final_items = cart.len();
    report.lost = acknowledged.difference(&cart).cloned().collect();
    Ok(report)
}

struct WriterOutcome {
    acknowledged: Vec<String>,
    indeterminate: usize,
    max_siblings: usize,
}

async fn writer(
    client: Client,
    key: Vec<u8>,
    writer: usize,
    items: usize,
) -> Result<WriterOutcome, Error> {
    let mut outcome = WriterOutcome {
        acknowledged: Vec::new(),
        indeterminate: 0,
        max_siblings: 0,
    };
    for i in 0..items {
        let item = format!("writer{writer}-item{i}");
        if add_item(&client, &key, &item, &mut outcome.max_siblings).await? {
            outcome.acknowledged.push(item);
        } else {
            outcome.indeterminate += 1;
        }
    }
    Ok(outcome)
}

/// Adds `item` with read-modify-write. `Ok(true)` once acknowledged, `Ok(false)` when every
/// attempt ended indeterminate; a request error that retrying cannot fix is returned.
async fn add_item(
    client: &Client,
    key: &[u8],
    item: &str,
    max_siblings: &mut usize,
) -> Result<bool, Error> {
    for attempt in 0..MAX_ADD_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(RETRY_BACKOFF * attempt).await;
        }
        let (context, mut cart) = match client.get(key, ReadOptions::default()).await {
            Ok(v) => {
                *max_siblings = (*max_siblings).max(v.values.len());
                (v.context, merge(&v.values))
            }
            Err(Error::NotFound { context }) => (context, BTreeSet::new()),
            Err(Error::Unavailable { .. } | Error::Transport(_)) => continue,
            Err(e) => return Err(e),
        };
        if attempt > 0 && cart.contains(item) {
            // An earlier, indeterminate attempt did land.
            return Ok(true);
        }
        cart.insert(item.to_string());
        match client
            .put(
                key,
                encode(&cart),
                context.as_deref(),
                WriteOptions::default(),
            )
            .await
        {
            Ok(_) => return Ok(true),
            Err(Error::Unavailable { .. } | Error::Transport(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_is_the_union_of_siblings() {
        let a: BTreeSet<String> = ["x".to_string(), "y".to_string()].into();
        let b: BTreeSet<String> = ["y".to_string(), "z".to_string()].into();
        let merged = merge(&[encode(&a), encode(&b), Bytes::new()]);
        assert_eq!(merged, ["x", "y", "z"].map(String::from).into());
        assert_eq!(merge(&[encode(&merged)]), merged);
    }
}
