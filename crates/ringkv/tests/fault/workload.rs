//! The shopping-cart workload and its history.
//!
//! Each client repeatedly picks a cart and a node, reads the cart with its context (JSON),
//! merges the siblings by union, adds one unique item (`c<client>-<n>`) and writes the cart
//! back with the context. Every add is recorded at invoke and at completion as ok (204),
//! fail (definitely not applied: the read failed, the connection was refused, or a 4xx) or
//! unknown (503 or a timeout: the write may be stored on some replicas).
//!
//! A deleter writes a few items in turn to dedicated carts `del-<k>` (each write holding only its
//! own item and superseding the previous one), chaining the context of each acknowledged write
//! into the next, then deletes the cart with the last context, so the delete covers every
//! acknowledged write of it; nobody writes to that cart again.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::Rng;

/// The carts clients add to.
pub const CARTS: &[&str] = &["cart-0", "cart-1", "cart-2", "cart-3"];
/// Concurrent clients.
pub const CLIENTS: usize = 5;
/// Items written to each deletable cart before it is deleted.
const DELETABLE_ITEMS: usize = 3;
/// Pause between two operations of one client: the workload's pace.
const CLIENT_PACE: Duration = Duration::from_millis(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Fail,
    Unknown,
}

/// One add (or a deletable cart's write) as the history records it.
#[derive(Debug, Clone)]
pub struct AddOp {
    pub client: usize,
    pub cart: String,
    pub item: String,
    pub node: usize,
    pub invoked: Duration,
    /// `None` while in flight.
    pub completed: Option<(Duration, Outcome, String)>,
}

/// One delete attempt of a deletable cart.
#[derive(Debug, Clone)]
pub struct DeleteOp {
    pub cart: String,
    pub node: usize,
    pub invoked: Duration,
    pub completed: Option<(Duration, Outcome, String)>,
    /// The acknowledged items the delete's context covers.
    pub covers: Vec<String>,
}

#[derive(Debug, Default)]
pub struct History {
    pub adds: Vec<AddOp>,
    pub deletes: Vec<DeleteOp>,
}

impl History {
    pub fn outcome_count(&self, outcome: Outcome) -> usize {
        self.adds
            .iter()
            .filter(|a| CARTS.contains(&a.cart.as_str()))
            .filter(|a| a.completed.as_ref().map(|c| c.1) == Some(outcome))
            .count()
    }

    /// The history as text, one operation per line, for the run dir.
    pub fn render(&self, urls: &[String]) -> String {
        let mut out = String::new();
        let line = |c: &Option<(Duration, Outcome, String)>| match c {
            Some((t, o, why)) => format!("{:>9.3}s {o:?} {why}", t.as_secs_f64()),
            None => "          in flight".to_string(),
        };
        for a in &self.adds {
            out.push_str(&format!(
                "{:>9.3}s add c{} {} {} via {} -> {}\n",
                a.invoked.as_secs_f64(),
                a.client,
                a.cart,
                a.item,
                urls[a.node],
                line(&a.completed)
            ));
        }
        for d in &self.deletes {
            out.push_str(&format!(
                "{:>9.3}s delete {} via {} covering {:?} -> {}\n",
                d.invoked.as_secs_f64(),
                d.cart,
                urls[d.node],
                d.covers,
                line(&d.completed)
            ));
        }
        out
    }
}

/// The HTTP side of the clients.
#[derive(Clone)]
pub struct Api {
    pub client: reqwest::Client,
    pub urls: Vec<String>,
}

/// A cart as read: its context and the union of its siblings' items.
pub struct Read {
    pub context: Option<String>,
    pub items: BTreeSet<String>,
}

/// What a write answered.
pub enum Written {
    Ok(Option<String>),
    Fail(String),
    Unknown(String),
}

pub fn parse_items(value: &[u8]) -> BTreeSet<String> {
    String::from_utf8_lossy(value)
        .split('\n')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn render_items(items: &BTreeSet<String>) -> String {
    items.iter().cloned().collect::<Vec<_>>().join("\n")
}

impl Api {
    fn kv(&self, node: usize, key: &str, query: &str) -> String {
        format!("{}/kv/{key}{query}", self.urls[node])
    }

    /// GET with `Accept: application/json`; the union of every sibling's items.
    pub async fn read(&self, node: usize, key: &str, query: &str) -> Result<Read, String> {
        let r = self
            .client
            .get(self.kv(node, key, query))
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("GET failed: {e}"))?;
        let status = r.status().as_u16();
        let body = r.bytes().await.map_err(|e| format!("GET body: {e}"))?;
        if status != 200 && status != 404 {
            return Err(format!(
                "GET answered {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("GET {status} body is not JSON ({e})"))?;
        let context = json["context"].as_str().map(str::to_string);
        let mut items = BTreeSet::new();
        for v in json["values"].as_array().into_iter().flatten() {
            let bytes = BASE64
                .decode(v.as_str().unwrap_or_default())
                .map_err(|e| format!("bad base64 value: {e}"))?;
            items.extend(parse_items(&bytes));
        }
        Ok(Read { context, items })
    }

    /// PUT (a value) or DELETE (`None`) with the context.
    pub async fn write(
        &self,
        node: usize,
        key: &str,
        value: Option<String>,
        context: Option<&str>,
    ) -> Written {
        let url = self.kv(node, key, "");
        let mut req = match value {
            Some(v) => self.client.put(url).body(v),
            None => self.client.delete(url),
        };
        if let Some(c) = context {
            req = req.header("x-context", c);
        }
        match req.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let ctx = r
                    .headers()
                    .get("x-context")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let body = r.text().await.unwrap_or_default();
                match status {
                    204 => Written::Ok(ctx),
                    400..=499 => Written::Fail(format!("{status} {body}")),
                    _ => Written::Unknown(format!("{status} {body}")),
                }
            }
            // The request never left: it cannot have been applied.
            Err(e) if e.is_connect() => Written::Fail(format!("connect: {e}")),
            Err(e) => Written::Unknown(format!("transport: {e}")),
        }
    }
}

/// The running workload: stop it with `stop`, which returns the history.
pub struct Workload {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    history: Arc<Mutex<History>>,
}

fn complete(
    history: &Mutex<History>,
    index: usize,
    started: Instant,
    outcome: Outcome,
    why: String,
) {
    history.lock().unwrap().adds[index].completed = Some((started.elapsed(), outcome, why));
}

impl Workload {
    /// Starts `CLIENTS` cart clients and the deleter against `api`; `only` restricts the nodes
    /// clients talk to (all when empty).
    pub fn start(api: Api, seed: u64, started: Instant) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let history = Arc::new(Mutex::new(History::default()));
        let mut tasks = Vec::new();
        for client in 0..CLIENTS {
            let (api, stop, history) = (api.clone(), stop.clone(), history.clone());
            let mut rng = Rng::new(seed ^ (0x5151_0000 + client as u64));
            tasks.push(tokio::spawn(async move {
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let cart = CARTS[rng.below(CARTS.len())];
                    let node = rng.below(api.urls.len());
                    let item = format!("c{client}-{seq}");
                    cart_add(&api, &history, client, cart, node, item, started).await;
                    tokio::time::sleep(CLIENT_PACE).await;
                }
            }));
        }
        let (api2, stop2, history2) = (api.clone(), stop.clone(), history.clone());
        let mut rng = Rng::new(seed ^ 0xDE1E7E);
        tasks.push(tokio::spawn(async move {
            deleter(&api2, &stop2, &history2, &mut rng, started).await;
        }));
        Workload {
            stop,
            tasks,
            history,
        }
    }

    /// A snapshot of the history so far.
    pub fn snapshot(&self) -> History {
        let h = self.history.lock().unwrap();
        History {
            adds: h.adds.clone(),
            deletes: h.deletes.clone(),
        }
    }

    /// Stops every client after its current operation and returns the history. Every
    /// operation has completed by then (each is bounded by the HTTP client's timeout).
    pub async fn stop(self) -> History {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("a workload task panicked");
        }
        let mut h = self.history.lock().unwrap();
        std::mem::take(&mut *h)
    }
}

async fn cart_add(
    api: &Api,
    history: &Mutex<History>,
    client: usize,
    cart: &str,
    node: usize,
    item: String,
    started: Instant,
) {
    let index = {
        let mut h = history.lock().unwrap();
        h.adds.push(AddOp {
            client,
            cart: cart.to_string(),
            item: item.clone(),
            node,
            invoked: started.elapsed(),
            completed: None,
        });
        h.adds.len() - 1
    };
    let read = match api.read(node, cart, "").await {
        Ok(r) => r,
        Err(e) => {
            complete(history, index, started, Outcome::Fail, format!("read: {e}"));
            return;
        }
    };
    let mut items = read.items;
    items.insert(item);
    let (outcome, why) = match api
        .write(
            node,
            cart,
            Some(render_items(&items)),
            read.context.as_deref(),
        )
        .await
    {
        Written::Ok(_) => (Outcome::Ok, String::new()),
        Written::Fail(e) => (Outcome::Fail, e),
        Written::Unknown(e) => (Outcome::Unknown, e),
    };
    complete(history, index, started, outcome, why);
}

/// Fills `del-<k>` carts and deletes them, one after the other, until stopped.
async fn deleter(
    api: &Api,
    stop: &AtomicBool,
    history: &Mutex<History>,
    rng: &mut Rng,
    started: Instant,
) {
    let mut k = 0;
    while !stop.load(Ordering::Relaxed) {
        let cart = format!("del-{k}");
        let mut context: Option<String> = None;
        let mut acked: Vec<String> = Vec::new();
        for j in 0..DELETABLE_ITEMS {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let item = format!("d{k}-{j}");
            let node = rng.below(api.urls.len());
            let index = {
                let mut h = history.lock().unwrap();
                h.adds.push(AddOp {
                    client: CLIENTS,
                    cart: cart.clone(),
                    item: item.clone(),
                    node,
                    invoked: started.elapsed(),
                    completed: None,
                });
                h.adds.len() - 1
            };
            // Each write holds only its own item: a write of unknown outcome that survives the
            // delete as a concurrent sibling then brings back only its own item, not the
            // acknowledged ones the delete covered.
            match api
                .write(node, &cart, Some(item.clone()), context.as_deref())
                .await
            {
                Written::Ok(ctx) => {
                    context = ctx;
                    acked.push(item);
                    complete(history, index, started, Outcome::Ok, String::new());
                }
                Written::Fail(e) => complete(history, index, started, Outcome::Fail, e),
                Written::Unknown(e) => complete(history, index, started, Outcome::Unknown, e),
            }
            tokio::time::sleep(CLIENT_PACE).await;
        }
        k += 1;
        let Some(context) = context else { continue };
        // Delete with the chained context until acknowledged (or the workload stops).
        while !stop.load(Ordering::Relaxed) {
            let node = rng.below(api.urls.len());
            let index = {
                let mut h = history.lock().unwrap();
                h.deletes.push(DeleteOp {
                    cart: cart.clone(),
                    node,
                    invoked: started.elapsed(),
                    completed: None,
                    covers: acked.clone(),
                });
                h.deletes.len() - 1
            };
            let (outcome, why) = match api.write(node, &cart, None, Some(&context)).await {
                Written::Ok(_) => (Outcome::Ok, String::new()),
                Written::Fail(e) => (Outcome::Fail, e),
                Written::Unknown(e) => (Outcome::Unknown, e),
            };
            history.lock().unwrap().deletes[index].completed =
                Some((started.elapsed(), outcome, why));
            tokio::time::sleep(CLIENT_PACE).await;
            if outcome == Outcome::Ok {
                break;
            }
        }
    }
}
