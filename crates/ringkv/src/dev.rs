//! `ringkv dev`: a local cluster of real `ringkv server` processes on 127.0.0.1, for trying
//! ringkv out. Node i listens for HTTP on 8100+i, RESP on 6100+i and between nodes on 7100+i;
//! node 1 founds the cluster and the others join it. Ctrl-C (or a SIGTERM to dev) sends SIGTERM
//! to every node and waits for them.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use ringkv_core::constants::DEFAULT_N;
use tokio::process::{Child, Command};

/// Most nodes `dev` starts.
const MAX_DEV_NODES: u16 = 9;
/// How long to wait for the cluster to form.
const FORM_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Args)]
pub struct DevArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// Where the nodes keep their data (one folder per node); reused across runs.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// First HTTP port; node i gets base+i-1.
    #[arg(long, default_value_t = 8101)]
    pub http_base: u16,
    /// First inter-node port.
    #[arg(long, default_value_t = 7101)]
    pub listen_base: u16,
    /// First Redis-protocol port.
    #[arg(long, default_value_t = 6101)]
    pub resp_base: u16,
    /// Gossip period of the dev nodes.
    #[arg(long, default_value_t = 200)]
    pub gossip_interval_ms: u64,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > MAX_DEV_NODES {
        bail!("--nodes must be 1..={MAX_DEV_NODES}");
    }
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("ringkv-dev"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let exe = std::env::current_exe()?;
    let mut children: Vec<Child> = Vec::new();
    let seed = format!("127.0.0.1:{}", args.listen_base);
    for i in 0..args.nodes {
        let mut cmd = Command::new(&exe);
        cmd.arg("server")
            .args(["--node-id", &format!("n{}", i + 1)])
            .args(["--listen", &format!("127.0.0.1:{}", args.listen_base + i)])
            .args(["--http", &format!("127.0.0.1:{}", args.http_base + i)])
            .args(["--resp", &format!("127.0.0.1:{}", args.resp_base + i)])
            .arg("--data-dir")
            .arg(dir.join(format!("n{}", i + 1)))
            .args(["--gossip-interval-ms", &args.gossip_interval_ms.to_string()])
            // N=3 (the default) where the cluster has three nodes or more; a smaller dev
            // cluster keeps one replica per node, so it serves (R and W default to N then).
            .args(["--n", &args.nodes.min(u16::from(DEFAULT_N)).to_string()])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if i > 0 {
            cmd.args(["--seed", &seed]);
        }
        children.push(cmd.spawn().context("starting a node")?);
    }
    let mut stop_signals = StopSignals::new()?;
    let outcome = tokio::select! {
        r = wait_formed(&args) => r,
        r = stop_signals.next() => r.and(Err(anyhow::anyhow!("interrupted"))),
    };
    if let Err(e) = outcome {
        stop(&mut children).await;
        return Err(e);
    }
    print_banner(&args, &dir);
    stop_signals.next().await?;
    eprintln!("stopping {} nodes", children.len());
    stop(&mut children).await;
    Ok(())
}

/// What stops `ringkv dev`: Ctrl-C (SIGINT) or SIGTERM. Both are caught, so that `kill <pid>`
/// of dev stops its nodes too instead of leaving them running without it.
struct StopSignals {
    term: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> anyhow::Result<StopSignals> {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("listening for SIGTERM")?;
        Ok(StopSignals { term })
    }

    async fn next(&mut self) -> anyhow::Result<()> {
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("listening for Ctrl-C"),
            _ = self.term.recv() => Ok(()),
        }
    }
}

/// Polls node 1's `/status` until every node shows `up`.
async fn wait_formed(args: &DevArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = tokio::time::Instant::now() + FORM_TIMEOUT;
    let url = format!("http://127.0.0.1:{}/status", args.http_base);
    while tokio::time::Instant::now() < deadline {
        if let Ok(resp) = client.get(&url).send().await
            && let Ok(body) = resp.json::<serde_json::Value>().await
        {
            let members = body["cluster"]["members"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let up = members.iter().filter(|m| m["status"] == "up").count();
            if up == args.nodes as usize {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the cluster did not form within {FORM_TIMEOUT:?}")
}

fn print_banner(args: &DevArgs, dir: &std::path::Path) {
    println!(
        "ringkv dev cluster: {} nodes up (data in {})",
        args.nodes,
        dir.display()
    );
    for i in 0..args.nodes {
        println!(
            "  n{}  http://127.0.0.1:{}  resp 127.0.0.1:{}  (inter-node 127.0.0.1:{})",
            i + 1,
            args.http_base + i,
            args.resp_base + i,
            args.listen_base + i
        );
    }
    let h = args.http_base;
    println!("\nTry:");
    println!("  curl -i -X PUT --data 'hello' http://127.0.0.1:{h}/kv/greeting");
    println!(
        "  curl -i http://127.0.0.1:{}/kv/greeting",
        h + args.nodes.min(2) - 1
    );
    println!("  curl -s http://127.0.0.1:{h}/status");
    println!("  ringkv status --node http://127.0.0.1:{h}");
    println!("  redis-cli -p {} SET greeting hello", args.resp_base);
    println!("\nCtrl-C stops the cluster.");
}

async fn stop(children: &mut [Child]) {
    for child in children.iter() {
        if let Some(pid) = child.id() {
            // SAFETY: sending a signal to a child process we started; no memory is touched.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }
    for child in children.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}
