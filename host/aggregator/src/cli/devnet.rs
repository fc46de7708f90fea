//! `aggregator devnet`: the local Subtensor RPC double on a WebSocket, for trying the daemon and clients by hand.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aggregator_devnet::{Devnet, DevnetConfig, SEED_FORMAT, Seed, Timestamps};
use anyhow::Context;
use clap::Args;

/// Arguments of `aggregator devnet`.
#[derive(Args, Debug)]
#[command(after_long_help = SEED_FORMAT)]
pub struct DevnetArgs {
    /// Seed file (JSON; the format is below under --help). Without one the chain has no neurons.
    #[arg(long)]
    seed: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port; the URL is printed).
    #[arg(long, default_value = "127.0.0.1:9944")]
    listen: SocketAddr,
    /// Seconds between blocks (Subtensor: 12). 0: no timer.
    #[arg(long, default_value_t = 12.0)]
    block_time: f64,
    /// Reproducible timestamps: block n gets START_MS + n · block time, instead of the wall clock.
    #[arg(long, value_name = "START_MS")]
    fixed_timestamps: Option<u64>,
    /// Blocks kept; older state is pruned as on a non-archive node.
    #[arg(long, default_value_t = 4096)]
    retain_blocks: usize,
}

/// Runs the devnet until Ctrl-C.
pub fn run(args: DevnetArgs) -> anyhow::Result<()> {
    let seed = match &args.seed {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            Seed::from_json(&text).with_context(|| format!("seed file {}", path.display()))?
        }
        None => Seed::default(),
    };
    if !(args.block_time.is_finite() && args.block_time >= 0.0) {
        anyhow::bail!("--block-time must be a non-negative number of seconds");
    }
    let block_time = (args.block_time > 0.0).then(|| Duration::from_secs_f64(args.block_time));
    let step_ms = block_time.map_or(12_000, |d| d.as_millis() as u64);
    let config = DevnetConfig {
        addr: args.listen,
        block_time,
        timestamps: args
            .fixed_timestamps
            .map_or(Timestamps::WallClock, |start_ms| Timestamps::Fixed {
                start_ms,
                step_ms,
            }),
        retain_blocks: args.retain_blocks,
    };
    crate::runtime()?.block_on(async move {
        let started = Instant::now();
        let devnet = Devnet::start(config, &seed).await?;
        println!(
            "devnet ready at {} in {} ms: subnet {}, {} neurons, {} raw commitments, head {}",
            devnet.url(),
            started.elapsed().as_millis(),
            seed.netuid,
            seed.neurons.len(),
            seed.raw_commitments.len(),
            devnet.head()
        );
        tokio::signal::ctrl_c().await?;
        println!("devnet stopping at head {}", devnet.head());
        devnet.shutdown().await;
        anyhow::Ok(())
    })
}
