//! After the faults are healed and the clients stopped: wait until the home replicas of every
//! key agree, read every cart, and check the history against it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use md5::{Digest, Md5};

use super::POLL_INTERVAL;
use super::workload::{Api, CARTS, History, Outcome};

/// Deadline for the final read of one cart (R = N = 3, every node up).
const FINAL_READ_TIMEOUT: Duration = Duration::from_secs(15);

/// What one node holds for a key: `None` for a 404, else the sorted versions (base64 value,
/// `None` for a tombstone) and the encoded context.
type Held = Option<(Vec<Option<String>>, String)>;

/// The key's home replicas (node ids) from `/ring`: the partition is the top log2(Q) bits
/// of MD5(key) read as a big-endian u128.
async fn home_replicas(
    api: &Api,
    keys: &[String],
) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut last = String::new();
    for url in &api.urls {
        let ring: serde_json::Value = match api.client.get(format!("{url}/ring")).send().await {
            Ok(r) if r.status().as_u16() == 200 => match r.json().await {
                Ok(j) => j,
                Err(e) => {
                    last = format!("{url}/ring: {e}");
                    continue;
                }
            },
            Ok(r) => {
                last = format!("{url}/ring answered {}", r.status());
                continue;
            }
            Err(e) => {
                last = format!("{url}/ring: {e}");
                continue;
            }
        };
        let q = ring["partitions"]
            .as_u64()
            .ok_or("no partitions in /ring")?;
        let bits = q.trailing_zeros();
        let table = ring["table"].as_array().ok_or("no table in /ring")?;
        let mut homes = BTreeMap::new();
        for key in keys {
            let hash = u128::from_be_bytes(Md5::digest(key.as_bytes()).into());
            let partition = if bits == 0 {
                0
            } else {
                (hash >> (128 - bits)) as usize
            };
            let entry = table
                .iter()
                .find(|e| e["partition"].as_u64() == Some(partition as u64))
                .ok_or_else(|| format!("partition {partition} missing from /ring"))?;
            let owners: Vec<String> = entry["owners"]
                .as_array()
                .ok_or("no owners")?
                .iter()
                .filter_map(|o| o.as_str().map(str::to_string))
                .collect();
            homes.insert(key.clone(), owners);
        }
        return Ok(homes);
    }
    Err(format!("no node answered /ring: {last}"))
}

/// The home replicas of one key, retried until a node answers `/ring`.
pub async fn home_replicas_of(api: &Api, key: &str) -> Vec<String> {
    let keys = [key.to_string()];
    let mut homes = super::poll_until(Duration::from_secs(10), "/ring", || async {
        home_replicas(api, &keys).await.ok()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    homes.remove(key).expect("asked for this key")
}

async fn held(api: &Api, node: usize, key: &str) -> Result<Held, String> {
    let url = format!("{}/admin/local/{key}", api.urls[node]);
    let r = api
        .client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    match r.status().as_u16() {
        404 => Ok(None),
        200 => {
            let j: serde_json::Value = r.json().await.map_err(|e| format!("{url}: {e}"))?;
            let mut versions: Vec<Option<String>> = j["versions"]
                .as_array()
                .ok_or_else(|| format!("{url}: no versions in {j}"))?
                .iter()
                .map(|v| v["value"].as_str().map(str::to_string))
                .collect();
            versions.sort();
            let context = j["context"].as_str().unwrap_or_default().to_string();
            Ok(Some((versions, context)))
        }
        s => Err(format!("{url} answered {s}")),
    }
}

/// What every node holds for each of `keys` (values decoded, contexts decoded), for a
/// failure report.
pub async fn dump_keys(api: &Api, ids: &[String], keys: &[String]) -> String {
    let mut out = String::new();
    for key in keys {
        out.push_str(&format!("--- {key}\n"));
        for (node, id) in ids.iter().enumerate() {
            let url = format!("{}/admin/local/{key}", api.urls[node]);
            let line = match api.client.get(&url).send().await {
                Ok(r) if r.status().as_u16() == 200 => match r.json::<serde_json::Value>().await {
                    Ok(j) => {
                        let values: Vec<String> = j["versions"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|v| match v["value"].as_str() {
                                None => "<tombstone>".to_string(),
                                Some(b) => {
                                    use base64::Engine;
                                    let raw = base64::engine::general_purpose::STANDARD
                                        .decode(b)
                                        .unwrap_or_default();
                                    let items = super::workload::parse_items(&raw);
                                    if items.len() > 6 {
                                        format!("[{} items]", items.len())
                                    } else {
                                        format!("{items:?}")
                                    }
                                }
                            })
                            .collect();
                        let ctx = j["context"].as_str().unwrap_or_default();
                        let decoded = ringkv_core::Context::decode(ctx)
                            .map(|c| format!("{c:?}"))
                            .unwrap_or_else(|e| format!("{ctx} ({e})"));
                        format!(
                            "{values:?} context {decoded} hinted_for {}",
                            j["hinted_for"]
                        )
                    }
                    Err(e) => format!("bad JSON: {e}"),
                },
                Ok(r) => format!("{}", r.status()),
                Err(e) => format!("{e}"),
            };
            out.push_str(&format!("{id}: {line}\n"));
        }
    }
    out
}

/// How the replicas converged.
#[derive(Debug, Clone)]
pub struct Convergence {
    pub converged: bool,
    pub took: Duration,
    /// When not converged: which keys still differed, and how.
    pub differing: Vec<String>,
}

/// Polls until, for every key, `/admin/local` on each of its home replicas answers the same
/// versions (and context), or `bound` passes.
pub async fn wait_converged(
    api: &Api,
    ids: &[String],
    keys: &[String],
    bound: Duration,
) -> Convergence {
    let started = Instant::now();
    loop {
        let differing = match compare_replicas(api, ids, keys).await {
            Ok(d) if d.is_empty() => {
                return Convergence {
                    converged: true,
                    took: started.elapsed(),
                    differing: Vec::new(),
                };
            }
            Ok(d) => d,
            Err(e) => vec![e],
        };
        if started.elapsed() >= bound {
            return Convergence {
                converged: false,
                took: started.elapsed(),
                differing,
            };
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The keys whose home replicas disagree, each with what each replica holds (abridged).
async fn compare_replicas(
    api: &Api,
    ids: &[String],
    keys: &[String],
) -> Result<Vec<String>, String> {
    let homes = home_replicas(api, keys).await?;
    let mut differing = Vec::new();
    for key in keys {
        let mut seen: Vec<(String, Held)> = Vec::new();
        for id in &homes[key] {
            let node = ids
                .iter()
                .position(|i| i == id)
                .ok_or_else(|| format!("/ring names unknown node {id}"))?;
            seen.push((id.clone(), held(api, node, key).await?));
        }
        if seen.windows(2).any(|w| w[0].1 != w[1].1) {
            let what: Vec<String> = seen
                .iter()
                .map(|(id, h)| match h {
                    None => format!("{id}: nothing"),
                    Some((v, ctx)) => format!(
                        "{id}: {} version(s) {:?} ctx {ctx}",
                        v.len(),
                        v.iter()
                            .map(|x| x.as_ref().map(|s| s.len()))
                            .collect::<Vec<_>>()
                    ),
                })
                .collect();
            differing.push(format!("{key}: {}", what.join("; ")));
        }
    }
    Ok(differing)
}

/// The counts the harness prints and fails on.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    pub acked_adds: usize,
    pub failed_adds: usize,
    pub unknown_adds: usize,
    /// Unknown adds that made it into the final cart.
    pub unknown_present: usize,
    pub lost: Vec<String>,
    pub phantom: Vec<String>,
    pub deletes_acked: usize,
    pub resurrected: Vec<String>,
    /// Carts the final read could not read.
    pub unreadable: Vec<String>,
}

/// Reads every cart with R=3 and checks the history against what it holds.
pub async fn check(api: &Api, history: &History) -> Checked {
    let mut out = Checked {
        acked_adds: history.outcome_count(Outcome::Ok),
        failed_adds: history.outcome_count(Outcome::Fail),
        unknown_adds: history.outcome_count(Outcome::Unknown),
        ..Checked::default()
    };
    let mut carts: BTreeSet<String> = CARTS.iter().map(|c| c.to_string()).collect();
    carts.extend(history.adds.iter().map(|a| a.cart.clone()));
    let deleted: BTreeMap<&str, &Vec<String>> = history
        .deletes
        .iter()
        .filter(|d| d.completed.as_ref().map(|c| c.1) == Some(Outcome::Ok))
        .map(|d| (d.cart.as_str(), &d.covers))
        .collect();
    out.deletes_acked = deleted.len();
    for (n, cart) in carts.iter().enumerate() {
        let final_items = match final_read(api, n, cart).await {
            Ok(items) => items,
            Err(e) => {
                out.unreadable.push(format!("{cart}: {e}"));
                continue;
            }
        };
        let invoked: BTreeSet<&str> = history
            .adds
            .iter()
            .filter(|a| &a.cart == cart)
            .map(|a| a.item.as_str())
            .collect();
        for item in &final_items {
            if !invoked.contains(item.as_str()) {
                out.phantom.push(format!("{cart}: {item}"));
            }
        }
        for add in history.adds.iter().filter(|a| &a.cart == cart) {
            let present = final_items.contains(&add.item);
            match add.completed.as_ref().map(|c| c.1) {
                // Deletable carts' writes supersede each other: only the shopping carts
                // must keep every acknowledged add.
                Some(Outcome::Ok) if !present && CARTS.contains(&cart.as_str()) => {
                    out.lost.push(format!("{cart}: {}", add.item));
                }
                Some(Outcome::Unknown) if present && CARTS.contains(&cart.as_str()) => {
                    out.unknown_present += 1;
                }
                _ => {}
            }
        }
        if let Some(covers) = deleted.get(cart.as_str()) {
            for item in covers.iter().filter(|i| final_items.contains(*i)) {
                out.resurrected.push(format!("{cart}: {item}"));
            }
        }
    }
    out
}

/// The union of a cart's siblings, read with R=3 through node `n mod nodes`, retried on 503
/// until `FINAL_READ_TIMEOUT`.
async fn final_read(api: &Api, n: usize, cart: &str) -> Result<BTreeSet<String>, String> {
    let deadline = Instant::now() + FINAL_READ_TIMEOUT;
    let mut attempt = 0;
    loop {
        let node = (n + attempt) % api.urls.len();
        match api.read(node, cart, "?r=3").await {
            Ok(r) => return Ok(r.items),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {}
        }
        attempt += 1;
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
