//! The command-line face of the HTTP API (API.md §3): `get`, `put`, `delete`, `status`, `ring`.

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
    #[arg(long)]
    pub context: Option<String>,
    #[command(flatten)]
    pub node: NodeArg,
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
    write(&args.node.node, &args.key, None, args.context, args.w).await
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

pub async fn status(args: NodeArg) -> anyhow::Result<()> {
    let body = get_json(&args.node, "/status").await?;
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
            m["partitions_owned"],
            m["listen"].as_str().unwrap_or(""),
            m["http"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

pub async fn ring(args: NodeArg) -> anyhow::Result<()> {
    let body = get_json(&args.node, "/ring").await?;
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
