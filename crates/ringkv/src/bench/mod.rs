//! `ringkv bench`: YCSB-style workloads against a running cluster. Being implemented.

use clap::Args;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Seed HTTP URL of any node.
    #[arg(long, default_value = "http://127.0.0.1:8101")]
    pub node: String,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("ringkv bench is not implemented yet ({})", args.node)
}
