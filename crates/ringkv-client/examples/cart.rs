//! The Dynamo shopping cart against a running cluster.
//!
//! ```text
//! cargo run -p ringkv --bin ringkv -- dev          # in one terminal
//! cargo run -p ringkv-client --example cart        # in another
//! cargo run -p ringkv-client --example cart -- http://127.0.0.1:8102
//! ```
//!
//! The seed URL comes from the first argument, else `RINGKV_SEEDS` (comma-separated), else
//! `http://127.0.0.1:8101`. Writers add unique items concurrently through every node; the
//! final cart must hold every acknowledged item, or the example exits with status 1.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use ringkv_client::ReadOptions;
use ringkv_client::cart::{self, CartConfig};

#[tokio::main]
async fn main() -> ExitCode {
    let seeds: String = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("RINGKV_SEEDS").ok())
        .unwrap_or_else(|| "http://127.0.0.1:8101".into());
    let seeds: Vec<&str> = seeds.split(',').map(str::trim).collect();
    let clients = match cart::clients_for_every_node(&seeds).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot connect to {seeds:?}: {e}");
            return ExitCode::from(2);
        }
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let config = CartConfig {
        cart_key: format!("cart:{nanos}").into_bytes(),
        writers: 8,
        items_per_writer: 10,
        final_read: ReadOptions::default(),
    };
    println!(
        "{} writers add {} items each to {} through {} nodes",
        config.writers,
        config.items_per_writer,
        String::from_utf8_lossy(&config.cart_key),
        clients.len()
    );
    match cart::run(&clients, &config).await {
        Ok(report) => {
            println!(
                "acknowledged {}, indeterminate {}, in the final cart {}, most siblings seen {}",
                report.acknowledged, report.indeterminate, report.final_items, report.max_siblings
            );
            if report.lost.is_empty() {
                println!("no acknowledged item was lost");
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "LOST {} acknowledged items: {:?}",
                    report.lost.len(),
                    report.lost
                );
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("the cart run failed: {e}");
            ExitCode::FAILURE
        }
    }
}
