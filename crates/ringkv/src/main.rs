//! The `ringkv` binary: `server` runs a node, `dev` a local cluster, and `get`, `put`,
//! `delete`, `status`, `ring`, `leave` talk to any node's HTTP API. `anyhow` is used here only.

mod bench;
mod cli;
mod dev;

use clap::{Parser, Subcommand};
use ringkv_node::{ServerArgs, Settings};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process. mimalloc asks the kernel for huge pages
/// on its arenas (`MADV_HUGEPAGE`) and gives freed memory back about once a second; every
/// refault then zeroes a whole 2 MiB page on the faulting request's thread, which stalled a
/// node's runtime workers for milliseconds once a second (docs/benchmarks.md, session 11).
/// The flag is read at fault time, so memory mapped before this call is covered too. Failure
/// (a kernel without the flag) costs only those stalls.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

#[derive(Parser)]
#[command(
    name = "ringkv",
    version,
    about = "A leaderless, always-writeable key-value store on the design of Dynamo"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node.
    Server(Box<ServerArgs>),
    /// Run a local cluster on 127.0.0.1 until Ctrl-C.
    Dev(dev::DevArgs),
    /// Read a key.
    Get(cli::GetArgs),
    /// Write a key.
    Put(cli::PutArgs),
    /// Delete a key.
    Delete(cli::DeleteArgs),
    /// Show the cluster as a node sees it, with handoff progress.
    Status(cli::StatusArgs),
    /// Show the partition table, or plan a join or leave (`ring plan`).
    Ring(cli::RingArgs),
    /// Hand a node's partitions to the other members; then it can be stopped.
    Leave(cli::LeaveArgs),
    /// Run a YCSB-style benchmark against a running cluster.
    Bench(Box<bench::BenchArgs>),
}

fn main() -> anyhow::Result<()> {
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Server(args) => {
            init_tracing();
            let settings = Settings::resolve(*args)?;
            runtime.block_on(serve(settings))
        }
        Command::Dev(args) => runtime.block_on(dev::run(args)),
        Command::Get(args) => runtime.block_on(cli::get(args)),
        Command::Put(args) => runtime.block_on(cli::put(args)),
        Command::Delete(args) => runtime.block_on(cli::delete(args)),
        Command::Status(args) => runtime.block_on(cli::status(args)),
        Command::Ring(args) => runtime.block_on(cli::ring(args)),
        Command::Leave(args) => runtime.block_on(cli::leave(args)),
        Command::Bench(args) => runtime.block_on(bench::run(*args)),
    }
}

fn init_tracing() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        trigger.cancel();
    });
    ringkv_node::run(settings, shutdown).await
}
