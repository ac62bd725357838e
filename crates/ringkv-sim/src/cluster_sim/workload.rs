//! The workload (cart clients, blind writers) and the checker client that waits for
//! convergence and reads the final state. Every operation goes into the `Records` the
//! checkers judge and, as a line, into the `History` the determinism test compares.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ringkv_core::{Context, Dot, NodeId, PartitionId, VersionSet, key_hash};
use ringkv_node::handoff::REFUSED_PREFIX;
use ringkv_node::settings::Limits;
use ringkv_node::transport::Peers;
use ringkv_node::wire::{ClientContext, ClientOp, ClientReply, Request, Response};

use super::check::{ReadRecord, Records, WriteOutcome, WriteRecord};
use super::net::{SharedFaults, SimNetwork};
use super::{FRONT_PORT, NODE_PORT, NodeTable, node_name};
use crate::rng::Rng;

/// Cart clients (read, add an item to the union of the siblings, write with the context).
const CART_CLIENTS: usize = 3;
/// Blind writers (blind puts, and deletes with the context of a read).
const BLIND_CLIENTS: usize = 2;
pub const CART_KEYS: &[&str] = &["cart-0", "cart-1"];
pub const BLIND_KEYS: &[&str] = &["blind-0", "blind-1"];
/// How long a client waits for a coordinator's answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the checker looks at the replicas while waiting for convergence.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// How long the nodes run on after converging before the final state is read: four tombstone
/// graces, so a tombstone stable since the heal is purged within it (a purge waits a grace
/// for stability, then a grace after its checks first passed, each from the heal at the
/// latest, plus anti-entropy passes).
const PURGE_WINDOW: Duration = Duration::from_millis(4 * super::TOMBSTONE_GRACE_MS);

/// The run's history: one line per event, in the order they happened.
#[derive(Clone, Default)]
pub struct History(Arc<Mutex<Vec<String>>>);

impl History {
    pub fn push(&self, line: String) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The client hosts: the workload's clients, the checker and, in a run with a leave, the
/// operator who asks for it.
pub fn client_names(admin: bool) -> Vec<String> {
    (0..CART_CLIENTS + BLIND_CLIENTS)
        .map(|i| format!("c{}", i + 1))
        .chain(std::iter::once("checker".to_string()))
        .chain(admin.then(|| ADMIN.to_string()))
        .collect()
}

/// The operator's host (it asks for the leave).
const ADMIN: &str = "admin";
/// How long the operator waits before asking again after a failed leave request.
const ADMIN_RETRY: Duration = Duration::from_millis(500);

fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

async fn sleep_until(at: Duration) {
    let left = at.saturating_sub(now());
    if !left.is_zero() {
        tokio::time::sleep(left).await;
    }
}

/// A value as the history shows it: the writer and sequence number, and for a cart its item
/// count and a hash of its bytes (carts grow to hundreds of items).
fn show_value(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    match text.split_once('|') {
        Some((head, _)) => format!(
            "{head}(items={},xxh3={:016x})",
            super::check::cart_items(value).len(),
            xxhash_rust::xxh3::xxh3_64(value)
        ),
        None => text.into_owned(),
    }
}

fn show(values: &[Bytes]) -> String {
    let shown: Vec<String> = values.iter().map(|v| show_value(v)).collect();
    format!("[{}]", shown.join(" "))
}

fn peers(name: &str, seed: u64) -> Peers {
    let faults: SharedFaults = Arc::default();
    Peers::new(
        NodeId::new(name).unwrap_or_else(|_| NodeId::new("client").expect("valid id")),
        Limits::default(),
        Arc::new(SimNetwork::new(faults, seed)),
    )
}

struct Client {
    name: String,
    rng: Rng,
    peers: Peers,
    nodes: usize,
    table: NodeTable,
    records: Arc<Mutex<Records>>,
    history: History,
    seq: u64,
    /// Per key, the dot of this client's last acknowledged write, or `None` after a write
    /// whose outcome is unknown.
    last: BTreeMap<String, Option<Dot>>,
}

impl Client {
    fn records(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn call(&mut self, op: ClientOp) -> Result<ClientReply, String> {
        // A node that left and was stopped is no longer in the client's list.
        let nodes: Vec<usize> = (0..self.nodes)
            .filter(|i| !self.table.is_gone(*i))
            .collect();
        let node = nodes[self.rng.below(nodes.len())];
        let addr = SocketAddr::new(turmoil::lookup(node_name(node)), FRONT_PORT);
        match self
            .peers
            .call(addr, Request::Coordinate(op), CLIENT_TIMEOUT)
            .await
        {
            Ok(Response::Coordinated(Ok(reply))) => Ok(reply),
            Ok(Response::Coordinated(Err(e))) => Err(e.to_string()),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn read(&mut self, key: &str) -> Option<Option<VersionSet>> {
        let at = now();
        let reply = self
            .call(ClientOp::Get {
                key: Bytes::from(key.to_string()),
                r: 2,
                strict: false,
            })
            .await;
        match reply {
            Ok(ClientReply::Read(versions)) => {
                let values: Vec<Bytes> = versions
                    .as_ref()
                    .map(|v| v.values().cloned().collect())
                    .unwrap_or_default();
                let siblings = versions.as_ref().map(|v| v.siblings().len()).unwrap_or(0);
                self.history.push(format!(
                    "{}ms {} get {key} -> ok siblings={siblings} {}",
                    at.as_millis(),
                    self.name,
                    show(&values)
                ));
                self.records().reads.push(ReadRecord {
                    key: key.to_string(),
                    client: self.name.clone(),
                    values,
                    siblings,
                });
                Some(versions)
            }
            Ok(other) => {
                self.history.push(format!(
                    "{}ms {} get {key} -> unexpected {other:?}",
                    at.as_millis(),
                    self.name
                ));
                None
            }
            Err(e) => {
                self.history.push(format!(
                    "{}ms {} get {key} -> failed: {e}",
                    at.as_millis(),
                    self.name
                ));
                None
            }
        }
    }

    /// Writes `value` (`None`: delete) with the context of `read` (`None`: blind).
    async fn write(&mut self, key: &str, read: Option<&Option<VersionSet>>, value: Option<Bytes>) {
        let invoked = now();
        let context = read.map(|r| r.as_ref().map(Context::of).unwrap_or_default());
        let covered: Vec<Bytes> = read
            .and_then(|r| r.as_ref())
            .map(|v| v.values().cloned().collect())
            .unwrap_or_default();
        let previous = self.last.get(key).cloned();
        let reply = self
            .call(ClientOp::Put {
                key: Bytes::from(key.to_string()),
                context: context.as_ref().map(ClientContext::from),
                value: value.clone(),
                w: 2,
                strict: false,
            })
            .await;
        let ended = now();
        let (outcome, sees_own_previous, shown) = match reply {
            Ok(ClientReply::Written { stored, dot }) => {
                // Whether this write superseded this client's previous one: the client's
                // context covered it, or (blind) the coordinator held it.
                let sees = match &previous {
                    None => true,
                    Some(None) => false,
                    Some(Some(prev)) => match &context {
                        Some(ctx) => ctx.covers(prev),
                        None => stored.covers(prev),
                    },
                };
                self.last.insert(key.to_string(), Some(dot));
                (WriteOutcome::Ok, sees, "ok".to_string())
            }
            Ok(other) => {
                self.last.insert(key.to_string(), None);
                (
                    WriteOutcome::Failed(format!("unexpected {other:?}")),
                    previous.is_none(),
                    format!("unexpected {other:?}"),
                )
            }
            Err(e) => {
                self.last.insert(key.to_string(), None);
                (
                    WriteOutcome::Failed(e.clone()),
                    previous.is_none(),
                    format!("failed: {e}"),
                )
            }
        };
        self.history.push(format!(
            "{}ms {} {} {key} {} ctx={} -> {shown} at {}ms",
            invoked.as_millis(),
            self.name,
            if value.is_some() { "put" } else { "delete" },
            value.as_ref().map(|v| show_value(v)).unwrap_or_default(),
            if read.is_some() {
                show(&covered)
            } else {
                "blind".into()
            },
            ended.as_millis()
        ));
        self.records().writes.push(WriteRecord {
            key: key.to_string(),
            client: self.name.clone(),
            value,
            invoked,
            ended,
            outcome,
            covered,
            sees_own_previous,
        });
    }

    async fn think(&mut self) {
        let pause = Duration::from_millis(20 + self.rng.below(150) as u64);
        tokio::time::sleep(pause).await;
    }
}

/// A cart client: read a cart, add an item to the union of its siblings, write it back with
/// the read's context.
async fn cart_client(mut c: Client, start: Duration, end: Duration) -> turmoil::Result {
    sleep_until(start).await;
    while now() < end {
        let key = CART_KEYS[c.rng.below(CART_KEYS.len())];
        let Some(read) = c.read(key).await else {
            c.think().await;
            continue;
        };
        let mut items: BTreeSet<String> = read
            .as_ref()
            .map(|v| {
                v.values()
                    .flat_map(|b| super::check::cart_items(b))
                    .collect()
            })
            .unwrap_or_default();
        c.seq += 1;
        let item = format!("{}.{}", c.name, c.seq);
        items.insert(item);
        let list: Vec<String> = items.into_iter().collect();
        let value = Bytes::from(format!("{}#{}|{}", c.name, c.seq, list.join(",")));
        c.write(key, Some(&read), Some(value)).await;
        c.think().await;
    }
    Ok(())
}

/// A blind writer: blind puts (no context) on shared keys, deletes with the context of a
/// read, and puts on keys of its own written once (what no later write can mask: only hinted
/// handoff, read repair and anti-entropy bring such a write to a replica that missed it).
async fn blind_client(mut c: Client, start: Duration, end: Duration) -> turmoil::Result {
    sleep_until(start).await;
    while now() < end {
        let key = BLIND_KEYS[c.rng.below(BLIND_KEYS.len())];
        match c.rng.below(10) {
            0..=3 => {
                c.seq += 1;
                let value = Bytes::from(format!("{}#{}", c.name, c.seq));
                c.write(key, None, Some(value)).await;
            }
            4..=6 => {
                c.seq += 1;
                let once = format!("once-{}-{}", c.name, c.seq);
                let value = Bytes::from(format!("{}#{}", c.name, c.seq));
                c.write(&once, None, Some(value)).await;
            }
            _ => {
                if let Some(read) = c.read(key).await {
                    c.write(key, Some(&read), None).await;
                }
            }
        }
        c.think().await;
    }
    Ok(())
}

/// Registers the clients; each runs from `workload.start` to `workload.end` (virtual time).
pub fn spawn_clients(
    sim: &mut turmoil::Sim<'_>,
    seed: u64,
    nodes: usize,
    table: NodeTable,
    records: Arc<Mutex<Records>>,
    workload: std::ops::Range<Duration>,
    history: History,
) {
    let (start, end) = (workload.start, workload.end);
    for (i, name) in client_names(false)
        .into_iter()
        .take(CART_CLIENTS + BLIND_CLIENTS)
        .enumerate()
    {
        let client_seed = seed ^ (0x636c_6965_6e74 + i as u64);
        let client = Client {
            name: name.clone(),
            rng: Rng::new(client_seed),
            peers: peers(&name, client_seed),
            nodes,
            table: table.clone(),
            records: records.clone(),
            history: history.clone(),
            seq: 0,
            last: BTreeMap::new(),
        };
        if i < CART_CLIENTS {
            sim.client(name, cart_client(client, start, end));
        } else {
            sim.client(name, blind_client(client, start, end));
        }
    }
}

/// When every client has finished: a client starts no operation after the workload's end,
/// and an operation (a read and a write) takes at most two client deadlines.
pub fn clients_done(workload_end: Duration) -> Duration {
    workload_end + 2 * CLIENT_TIMEOUT + Duration::from_millis(500)
}

/// The checker client: from `from` (every client done), at most `bound` long, waits until every running node holds
/// the same settled ring and every key's home replicas hold the same versions; then records
/// each key's final versions.
pub fn spawn_checker(
    sim: &mut turmoil::Sim<'_>,
    seed: u64,
    table: NodeTable,
    records: Arc<Mutex<Records>>,
    from: Duration,
    bound: Duration,
    history: History,
) {
    let peers = peers("checker", seed);
    sim.client("checker", async move {
        sleep_until(from).await;
        let deadline = from + bound;
        let mut last_problem;
        loop {
            let (mut finals, problem) = look(&peers, &table, &records).await;
            last_problem = problem;
            let done = last_problem.is_none() || now() >= deadline;
            if done {
                if last_problem.is_none() {
                    let converged_after = now().saturating_sub(from);
                    history.push(format!(
                        "{}ms converged after {}ms",
                        now().as_millis(),
                        converged_after.as_millis()
                    ));
                    records
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .converged_after = Some(converged_after);
                    // The nodes run on, unwatched, long enough to purge the stable
                    // tombstones; the final state the checks judge is read after that, so a
                    // value a purge let come back is caught.
                    tokio::time::sleep(PURGE_WINDOW).await;
                    let (after, problem) = look(&peers, &table, &records).await;
                    finals = after;
                    last_problem = problem.map(|p| format!("after the purge window: {p}"));
                }
                let mut r = records.lock().unwrap_or_else(|e| e.into_inner());
                match &last_problem {
                    None => {}
                    Some(p) => {
                        history.push(format!("{}ms not converged: {p}", now().as_millis()));
                        r.not_converged = Some(p.clone());
                    }
                }
                let purged: u64 = table
                    .running()
                    .iter()
                    .map(|(_, n)| {
                        n.tombstones()
                            .purged
                            .load(std::sync::atomic::Ordering::Relaxed)
                    })
                    .sum();
                history.push(format!("tombstones purged by the running nodes: {purged}"));
                for (key, versions) in &finals {
                    let line = match versions {
                        None => "none".to_string(),
                        Some(v) => {
                            let values: Vec<Bytes> = v.values().cloned().collect();
                            format!(
                                "digest={:016x} siblings={} context={:?} values={}",
                                v.digest(),
                                v.siblings().len(),
                                v.context(),
                                show(&values)
                            )
                        }
                    };
                    history.push(format!("final {key} {line}"));
                }
                r.finals = finals;
                break;
            }
            tokio::time::sleep(CHECK_EVERY).await;
        }
        Ok(())
    });
}

/// One look at the cluster: each key's versions (synced over the replicas that answered) and,
/// if the cluster has not converged, why.
async fn look(
    peers: &Peers,
    table: &NodeTable,
    records: &Mutex<Records>,
) -> (BTreeMap<String, Option<VersionSet>>, Option<String>) {
    let running = table.running();
    let mut problem = None;
    let rings: BTreeSet<(u64, u64)> = running
        .iter()
        .filter_map(|(_, n)| n.membership().ring().map(|r| (r.version, r.digest())))
        .collect();
    if rings.len() != 1 {
        problem = Some(format!(
            "the running nodes hold {} different rings",
            rings.len()
        ));
    }
    let ring = running
        .iter()
        .filter_map(|(_, n)| n.membership().ring())
        .max_by_key(|r| (r.version, r.digest()));
    let mut finals = BTreeMap::new();
    let Some(ring) = ring else {
        return (finals, Some("no running node has a ring".into()));
    };
    if ring.topology.transition().is_some() && problem.is_none() {
        problem = Some(format!(
            "ring version {} is still in a transition",
            ring.version
        ));
    }
    let mut keys: BTreeSet<String> = CART_KEYS
        .iter()
        .chain(BLIND_KEYS)
        .map(|k| k.to_string())
        .collect();
    keys.extend(
        records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .writes
            .iter()
            .map(|w| w.key.clone()),
    );
    for key in &keys {
        let partition =
            PartitionId::of(key_hash(key.as_bytes()), ring.topology.params().partitions);
        let mut seen: Vec<Option<VersionSet>> = Vec::new();
        for home in ring.topology.home(partition) {
            let addr = SocketAddr::new(turmoil::lookup(home.as_str()), NODE_PORT);
            // What the node holds, whatever its ring says: the checks compare the replicas'
            // stored sets (a node still on an older ring answers them too).
            let request = Request::Read {
                key: Bytes::from(key.to_string()),
                as_home: false,
            };
            match peers.call(addr, request, CLIENT_TIMEOUT).await {
                Ok(Response::Versions(v)) => seen.push(v),
                other => {
                    if problem.is_none() {
                        problem = Some(format!("home replica {home} of {key} answered {other:?}"));
                    }
                }
            }
        }
        if seen.windows(2).any(|w| w[0] != w[1]) && problem.is_none() {
            problem = Some(format!("the home replicas of {key} differ"));
        }
        let merged = seen.into_iter().flatten().reduce(|a, b| a.sync(&b));
        finals.insert(key.to_string(), merged);
    }
    (finals, problem)
}

/// The operator: at `at`, asks a running node to remove `leaver` (`Request::Leave` on its front
/// door, as `POST /admin/leave?node=ID`), asking again (another node, chosen by the seed) after
/// a failure until one records it, a node refuses it, or the workload ends. A leave needs N
/// members left behind: the operator first waits until the newest ring's committed members
/// number more than N (in a cluster of N nodes, until the join has completed).
pub fn spawn_admin(
    sim: &mut turmoil::Sim<'_>,
    seed: u64,
    table: NodeTable,
    leaver: usize,
    at: Duration,
    until: Duration,
    history: History,
) {
    let admin_seed = seed ^ 0x0061_646d_696e;
    let peers = peers(ADMIN, admin_seed);
    let mut rng = Rng::new(admin_seed);
    let name = node_name(leaver);
    sim.client(ADMIN, async move {
        sleep_until(at).await;
        let id = NodeId::new(name.clone()).expect("valid id");
        loop {
            let ready = table.newest_ring().is_some_and(|r| {
                r.topology.is_member(&id)
                    && r.topology.committed().members().len() > super::MIN_MEMBERS
            });
            if ready {
                break;
            }
            if now() >= until {
                history.push(format!(
                    "{}ms leave of {name} not asked: the ring never had more than {} members",
                    now().as_millis(),
                    super::MIN_MEMBERS
                ));
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        loop {
            let running: Vec<usize> = table.running().iter().map(|(i, _)| *i).collect();
            let outcome = if running.is_empty() {
                "failed: no node is running".to_string()
            } else {
                let taker = running[rng.below(running.len())];
                let addr = SocketAddr::new(turmoil::lookup(node_name(taker)), FRONT_PORT);
                let request = Request::Leave { node: id.clone() };
                let asked = now();
                let answer = peers.call(addr, request, CLIENT_TIMEOUT).await;
                let shown = match &answer {
                    Ok(Response::Ok) => "recorded".to_string(),
                    Ok(Response::Error(e)) => format!("failed: {e}"),
                    Ok(other) => format!("failed: unexpected {other:?}"),
                    Err(e) => format!("failed: {e}"),
                };
                history.push(format!(
                    "{}ms admin leave {name} at {} -> {shown} at {}ms",
                    asked.as_millis(),
                    node_name(taker),
                    now().as_millis()
                ));
                match answer {
                    Ok(Response::Ok) => return Ok(()),
                    Ok(Response::Error(e)) if e.starts_with(REFUSED_PREFIX) => return Ok(()),
                    _ => shown,
                }
            };
            if now() >= until {
                history.push(format!(
                    "{}ms leave of {name} given up: {outcome}",
                    now().as_millis()
                ));
                return Ok(());
            }
            tokio::time::sleep(ADMIN_RETRY).await;
        }
    });
}
