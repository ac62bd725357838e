//! The command-line face of the HTTP API (API.md §3): `get`, `put`, `delete`, `status`, `ring`,
//! `ring plan`, `leave`.

use anyhow::{Context as _, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::Args;
use std::io::{Read, Write};

/// Default node to talk to.
const DEFAULT_NODE: &str = "http://127.0.0.1:8101";

#[derive(Args)]
pub struct NodeArg {
    /// HTTP address of any node.
    #[arg(long, default_value = DEFAULT_NODE, env = "RINGKV_NODE")]
    pub node: String,
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub node: NodeArg,
    /// Keep showing handoff progress until no transfer is pending.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Args)]
pub struct RingArgs {
    #[command(subcommand)]
    pub action: Option<RingAction>,
    #[command(flatten)]
    pub node: NodeArg,
}

#[derive(clap::Subcommand)]
pub enum RingAction {
    /// Print what a join or leave would move, without changing anything.
    Plan(PlanArgs),
}

#[derive(Args)]
pub struct PlanArgs {
    /// A node that would join: ID[:WEIGHT[:ZONE]].
    #[arg(long)]
    pub join: Option<String>,
    /// A member that would leave.
    #[arg(long)]
    pub leave: Option<String>,
    #[command(flatten)]
    pub node: NodeArg,
}

#[derive(Args)]
pub struct LeaveArgs {
    /// The member to leave (default: the node addressed by --node).
    pub id: Option<String>,
    #[command(flatten)]
    pub node: NodeArg,
}

#[derive(Args)]
pub struct GetArgs {
    pub key: String,
    #[command(flatten)]
    pub node: NodeArg,
    /// Read quorum for this request.
    #[arg(long)]
    pub r: Option<u8>,
}

#[derive(Args)]
pub struct PutArgs {
    pub key: String,
    /// The value; `-` reads it from standard input.
    pub value: String,
    /// The context from an earlier get (omit: the write is concurrent with what is stored).
    #[arg(long)]
    pub context: Option<String>,
    #[command(flatten)]
    pub node: NodeArg,
    /// Write quorum for this request.
    #[arg(long)]
    pub w: Option<u8>,
}

#[derive(Args)]
pub struct DeleteArgs {
    pub key: String,
    /// The context from an earlier get: the delete removes every version it covers (omit: the
    /// delete is concurrent with what is stored, which survives as siblings).
    #[arg(long)]
    pub context: Option<String>,
    #[command(flatten)]
    pub node: NodeArg,
    /// Write quorum for this request.
    #[arg(long)]
    pub w: Option<u8>,
}

/// Percent-encodes a key as one path segment (everything but RFC 3986 unreserved bytes).
pub fn encode_key(key: &[u8]) -> String {
    let mut out = String::with_capacity(key.len() * 3);
    for &b in key {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn url(node: &str, path: &str, query: &[(&str, Option<u8>)]) -> String {
    let mut url = format!("{}{}", node.trim_end_matches('/'), path);
    let params: Vec<String> = query
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
        .collect();
    if !params.is_empty() {
        url.push('?');
        url.push_str(&params.join("&"));
    }
    url
}

fn printable(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(s) if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => s.to_string(),
        _ => format!("base64:{}", BASE64.encode(value)),
    }
}

async fn error_of(response: reqwest::Response) -> anyhow::Error {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    anyhow::anyhow!("{status}: {body}")
}

pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let url = url(
        &args.node.node,
        &format!("/kv/{}", encode_key(args.key.as_bytes())),
        &[("r", args.r)],
    );
    let response = client
        .get(&url)
        .header("accept", "application/json")
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    if status != reqwest::StatusCode::OK && status != reqwest::StatusCode::NOT_FOUND {
        return Err(error_of(response).await);
    }
    let body: serde_json::Value = response.json().await?;
    let values = body["values"].as_array().cloned().unwrap_or_default();
    let mut out = std::io::stdout().lock();
    match values.len() {
        0 => writeln!(out, "(not found)")?,
        1 => writeln!(
            out,
            "{}",
            printable(&BASE64.decode(values[0].as_str().unwrap_or(""))?)
        )?,
        n => {
            writeln!(
                out,
                "{n} siblings (write back with the context to reconcile):"
            )?;
            for (i, v) in values.iter().enumerate() {
                writeln!(
                    out,
                    "  [{}] {}",
                    i + 1,
                    printable(&BASE64.decode(v.as_str().unwrap_or(""))?)
                )?;
            }
        }
    }
    if let Some(ctx) = body["context"].as_str() {
        writeln!(out, "context: {ctx}")?;
    }
    Ok(())
}

pub async fn put(args: PutArgs) -> anyhow::Result<()> {
    let value = if args.value == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf)?;
        buf
    } else {
        args.value.into_bytes()
    };
    write(
        &args.node.node,
        &args.key,
        Some(value),
        args.context,
        args.w,
    )
    .await
}

pub async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let blind = args.context.is_none();
    write(&args.node.node, &args.key, None, args.context, args.w).await?;
    if blind {
        eprintln!(
            "note: deleted without --context, so versions already stored survive (a delete is \
             a causal write); to remove them, pass the context `ringkv get` prints"
        );
    }
    Ok(())
}

async fn write(
    node: &str,
    key: &str,
    value: Option<Vec<u8>>,
    context: Option<String>,
    w: Option<u8>,
) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let url = url(
        node,
        &format!("/kv/{}", encode_key(key.as_bytes())),
        &[("w", w)],
    );
    let mut request = match value {
        Some(v) => client.put(&url).body(v),
        None => client.delete(&url),
    };
    if let Some(ctx) = context {
        request = request.header("x-context", ctx);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("request to {url}"))?;
    if response.status() != reqwest::StatusCode::NO_CONTENT {
        return Err(error_of(response).await);
    }
    let ctx = response
        .headers()
        .get("x-context")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    println!("ok\ncontext: {ctx}");
    Ok(())
}

async fn get_json(node: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let url = url(node, path, &[]);
    let response = reqwest::get(&url)
        .await
        .with_context(|| format!("GET {url}"))?;
    if !response.status().is_success() {
        return Err(error_of(response).await);
    }
    Ok(response.json().await?)
}

/// `GET /status`: its body whether the node is ready (200) or not yet (503, before it has a
/// ring: still what an operator wants to see).
async fn get_status(node: &str) -> anyhow::Result<serde_json::Value> {
    let url = url(node, "/status", &[]);
    let response = reqwest::get(&url)
        .await
        .with_context(|| format!("GET {url}"))?;
    let code = response.status();
    if code != reqwest::StatusCode::OK && code != reqwest::StatusCode::SERVICE_UNAVAILABLE {
        return Err(error_of(response).await);
    }
    if code != reqwest::StatusCode::OK {
        eprintln!("the node is not ready yet: it has not joined a cluster");
    }
    Ok(response.json().await?)
}

pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let body = get_status(&args.node.node).await?;
    let cluster = &body["cluster"];
    println!(
        "node {}  N={}  Q={}  ring version {}",
        body["node_id"].as_str().unwrap_or("?"),
        cluster["n"],
        cluster["partitions"],
        cluster["ring_version"]
    );
    println!(
        "{:<20} {:<8} {:<10} {:>10}  {:<22} {:<22}",
        "NODE", "STATUS", "ZONE", "PARTITIONS", "LISTEN", "HTTP"
    );
    let Some(members) = cluster["members"].as_array() else {
        bail!("malformed /status answer")
    };
    for m in members {
        println!(
            "{:<20} {:<8} {:<10} {:>10}  {:<22} {:<22}",
            m["node_id"].as_str().unwrap_or("?"),
            m["status"].as_str().unwrap_or("?"),
            m["zone"].as_str().unwrap_or("?"),
            m["partitions_owned"].to_string(),
            m["listen"].as_str().unwrap_or(""),
            m["http"].as_str().unwrap_or("")
        );
    }
    let handoff = &body["handoff"];
    println!(
        "this node: {} partitions moving, {} waiting, {} received; {} bytes received, {} sent, {} keys dropped",
        handoff["partitions_moving"],
        handoff["partitions_pending"],
        handoff["partitions_done"],
        handoff["bytes_received"],
        handoff["bytes_sent"],
        handoff["keys_dropped"]
    );
    let Some((done, total)) = transfer_progress(&body) else {
        println!("no join or leave in progress");
        return Ok(());
    };
    if !args.watch {
        println!(
            "handoff {} {done}/{total} partition transfers",
            text_bar(done, total, 30)
        );
        return Ok(());
    }
    watch_handoff(&args.node.node, total).await
}

/// (done, total) partition transfers of the open transition, if any.
fn transfer_progress(status: &serde_json::Value) -> Option<(u64, u64)> {
    let t = status["cluster"]["transition"].as_object()?;
    let total = t.get("transfers_total")?.as_u64()?;
    let pending = t.get("transfers_pending")?.as_u64()?;
    Some((total.saturating_sub(pending), total))
}

fn text_bar(done: u64, total: u64, width: usize) -> String {
    let filled = (done as usize * width)
        .checked_div(total as usize)
        .unwrap_or(width);
    format!(
        "[{}{}]",
        "#".repeat(filled),
        "-".repeat(width - filled.min(width))
    )
}

/// A live progress bar of the cluster's partition transfers, until none is pending.
async fn watch_handoff(node: &str, total: u64) -> anyhow::Result<()> {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "handoff {bar:40} {pos}/{len} partition transfers ({elapsed}) {msg}",
        )
        .expect("a valid template"),
    );
    loop {
        let body = get_status(node).await?;
        match transfer_progress(&body) {
            Some((done, total)) => {
                bar.set_length(total);
                bar.set_position(done);
                bar.set_message(format!(
                    "{} bytes received here",
                    body["handoff"]["bytes_received"]
                ));
            }
            None => {
                bar.finish_with_message("done");
                return Ok(());
            }
        }
        // Polling interval of a progress display.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

pub async fn leave(args: LeaveArgs) -> anyhow::Result<()> {
    let query = args
        .id
        .as_deref()
        .map(|id| format!("?node={}", encode_key(id.as_bytes())))
        .unwrap_or_default();
    let url = format!(
        "{}/admin/leave{query}",
        args.node.node.trim_end_matches('/')
    );
    let response = reqwest::Client::new()
        .post(&url)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    if response.status() != reqwest::StatusCode::ACCEPTED {
        return Err(error_of(response).await);
    }
    let body: serde_json::Value = response.json().await?;
    println!(
        "{} is leaving (ring version {}); follow the handoff with `ringkv status --watch`",
        body["node_id"].as_str().unwrap_or("?"),
        body["ring_version"]
    );
    Ok(())
}

async fn plan(args: PlanArgs) -> anyhow::Result<()> {
    let mut query = Vec::new();
    if let Some(join) = &args.join {
        query.push(format!("join={}", encode_key(join.as_bytes())));
    }
    if let Some(leave) = &args.leave {
        query.push(format!("leave={}", encode_key(leave.as_bytes())));
    }
    if query.is_empty() {
        bail!("say what would change: --join ID[:WEIGHT[:ZONE]] and/or --leave ID");
    }
    let body = get_json(&args.node.node, &format!("/admin/plan?{}", query.join("&"))).await?;
    println!(
        "plan from ring version {}: {} partition replicas move (optimum {}, ratio {:.2}); about {} keys and {} bytes per partition",
        body["ring_version"],
        body["replicas_moved"],
        body["replicas_moved_optimal"],
        body["movement_ratio"].as_f64().unwrap_or(0.0),
        body["keys_per_partition_estimate"],
        body["bytes_per_partition_estimate"]
    );
    println!(
        "{:<20} {:<10} {:>6} {:>9} {:>9} {:>8} {:>8} {:>12} {:>14}",
        "NODE", "ZONE", "WEIGHT", "OWNED", "->", "GAINS", "LOSES", "KEYS IN/OUT", "BYTES IN/OUT"
    );
    for n in body["nodes"].as_array().into_iter().flatten() {
        println!(
            "{:<20} {:<10} {:>6} {:>9} {:>9} {:>8} {:>8} {:>12} {:>14}",
            n["node_id"].as_str().unwrap_or("?"),
            n["zone"].as_str().unwrap_or("?"),
            n["weight"].to_string(),
            n["owned_before"].to_string(),
            n["owned_after"].to_string(),
            n["replicas_gained"].to_string(),
            n["replicas_lost"].to_string(),
            format!("{}/{}", n["est_keys_in"], n["est_keys_out"]),
            format!("{}/{}", n["est_bytes_in"], n["est_bytes_out"]),
        );
    }
    Ok(())
}

pub async fn ring(args: RingArgs) -> anyhow::Result<()> {
    if let Some(RingAction::Plan(plan_args)) = args.action {
        return plan(plan_args).await;
    }
    let body = get_json(&args.node.node, "/ring").await?;
    println!(
        "ring version {}  N={}  Q={}",
        body["version"], body["n"], body["partitions"]
    );
    let table = body["table"].as_array().cloned().unwrap_or_default();
    let mut primary: std::collections::BTreeMap<String, usize> = Default::default();
    let mut replicas: std::collections::BTreeMap<String, usize> = Default::default();
    for p in &table {
        for (i, o) in p["owners"].as_array().into_iter().flatten().enumerate() {
            let o = o.as_str().unwrap_or("?").to_string();
            if i == 0 {
                *primary.entry(o.clone()).or_default() += 1;
            }
            *replicas.entry(o).or_default() += 1;
        }
    }
    println!("{:<20} {:>10} {:>10}", "NODE", "PRIMARY", "REPLICAS");
    for (node, count) in &replicas {
        println!(
            "{:<20} {:>10} {:>10}",
            node,
            primary.get(node).copied().unwrap_or(0),
            count
        );
    }
    Ok(())
}
