//! Benchmarks: indexswarm side by side with reference clients on the same
//! data, in the same invocation. Results go to stdout as Markdown, with the
//! machine, the date and the command; BENCHMARKS.md records them.
//!
//! ```sh
//! cargo build --release && cargo build --release --example bench
//! sudo target/release/examples/bench create   --size 1G
//! sudo target/release/examples/bench tracker  --rate 5000
//! sudo target/release/examples/bench transfer --size 1G
//! sudo target/release/examples/bench swarm    --size 256M --leechers 8 --mbit 200
//! sudo target/release/examples/bench publish  --size 1G
//! sudo target/release/examples/bench replicate --size 1G --replicas 8 --mbit 128
//! target/release/examples/bench freshness --size 1G --replicas 8     # #9
//! target/release/examples/bench skew      --size 1G --replicas 8     # #9
//! target/release/examples/bench rollback  --size 1G --replicas 8     # #9
//! target/release/examples/bench tls       --size 1G                  # #11
//! target/release/examples/bench tracker-token --rate 5000            # #11
//! ```
//!
//! `swarm` and `replicate` give every node its own network namespace, a veth
//! into one bridge and a `tc tbf` cap on its upload (root needed): the
//! faithful way to model separate hosts on one machine. The other
//! benchmarks run on loopback. Reference peers: aria2c, python3-libtorrent
//! (integration/peers/lt_peer.py), opentracker, mktorrent, sha1sum.

use std::path::PathBuf;

mod big;
mod cluster;
mod common;
mod create;
mod files;
mod fleet;
mod freshness;
mod netns;
mod publish;
mod publish_cost;
mod replicate;
mod rollback;
mod skew;
mod swarm;
mod tls;
mod tracker;
mod tracker_token;
mod transfer;
mod versions;

use anyhow::Result;
use clap::{Parser, Subcommand};
use indexswarm::units::ByteSize;

#[derive(Parser)]
#[command(about = "indexswarm benchmarks beside aria2, libtorrent, opentracker and mktorrent")]
pub(crate) struct Cli {
    /// Scratch directory (data is generated once and reused).
    #[arg(long, default_value = "/tmp/isw-bench")]
    pub(crate) work: PathBuf,
    /// Repetitions for single-process timings (best is reported).
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: usize,
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

/// The fleet the #9 benchmarks start: its index, its replicas, its deltas.
#[derive(clap::Args)]
pub(crate) struct FleetArgs {
    #[arg(long, default_value = "1G")]
    size: ByteSize,
    #[arg(long, default_value_t = 8)]
    replicas: usize,
    /// New bytes in each next version, percent of the index.
    #[arg(long, default_value_t = 1.0)]
    change_pct: f64,
    /// Measurements (versions, rollbacks) per mode; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// `create` against `mktorrent -t 2` and the SHA-1 limit.
    Create {
        #[arg(long, default_value = "1G")]
        size: ByteSize,
    },
    /// Announces per second and latency against opentracker.
    Tracker {
        #[arg(long, default_value_t = 5000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// One seeder to one leecher over loopback: indexswarm, aria2, libtorrent.
    Transfer {
        #[arg(long, default_value = "1G")]
        size: ByteSize,
    },
    /// One seeder, N leechers, every node's upload capped: time against the Kumar–Ross bound.
    Swarm {
        #[arg(long, default_value = "256M")]
        size: ByteSize,
        #[arg(long, default_value_t = 8)]
        leechers: usize,
        /// Upload cap of every node, in Mbit/s.
        #[arg(long, default_value_t = 200)]
        mbit: u64,
        /// Skip the libtorrent run.
        #[arg(long)]
        no_libtorrent: bool,
        /// Runs per client; the median run (by the last leecher) is reported.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
    },
    /// Master: settled snapshot to visible version, and memory while seeding.
    Publish {
        #[arg(long, default_value = "1G")]
        size: ByteSize,
        #[arg(long, default_value_t = 8)]
        leechers: usize,
    },
    /// Master + N replicas in namespaces: version 1 against the bound and HTTP fan-out, then a 5% version 2.
    Replicate {
        #[arg(long, default_value = "1G")]
        size: ByteSize,
        #[arg(long, default_value_t = 8)]
        replicas: usize,
        #[arg(long, default_value_t = 128)]
        mbit: u64,
        /// Skip the (slow) plain-HTTP fan-out run.
        #[arg(long)]
        no_http: bool,
    },
    /// Master: a ~1% change over a big index of hard links, marker → visible, against hashing the change and a full rehash.
    PublishCost {
        #[arg(long, default_value = "10G")]
        size: ByteSize,
        /// New bytes in the next version, percent of the index.
        #[arg(long, default_value_t = 1.0)]
        change_pct: f64,
        /// Versions measured; the median is reported.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
    },
    /// Master + replicas on loopback: publish and replicate time, RSS and fds as the file count grows.
    Files {
        /// File counts, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "500,5000,50000")]
        counts: Vec<usize>,
        #[arg(long, default_value_t = 1)]
        replicas: usize,
        /// Runs per count; the median is reported.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
    },
    /// Many versions in a row with a small retention, one replica following: what must stay flat.
    Versions {
        #[arg(long, default_value_t = 200)]
        versions: u64,
        /// The master's keep_versions.
        #[arg(long, default_value_t = 3)]
        keep: usize,
        /// Size of the first snapshot.
        #[arg(long, default_value = "64M")]
        size: ByteSize,
        /// Size of the segment each version adds.
        #[arg(long, default_value = "256K")]
        segment: ByteSize,
        /// Versions at which to record the figures, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "10,50,100,150,200")]
        at: Vec<u64>,
        /// Leave old snapshot directories in place (no delete_old_snapshots).
        #[arg(long)]
        keep_snapshots: bool,
    },
    /// A big index of thousands of files to N replicas on loopback, against loopback throughput; RSS and fds.
    Big {
        #[arg(long, default_value = "20G")]
        size: ByteSize,
        #[arg(long, default_value_t = 5000)]
        files: usize,
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        /// Compressible-but-unique bytes (for a compressing filesystem that must hold every copy).
        #[arg(long)]
        compressible: bool,
    },
    /// Fleet rollouts (#9): marker file → every replica serves a ~1% delta, long poll against interval polling.
    Freshness {
        #[command(flatten)]
        fleet: FleetArgs,
        /// The replicas' poll_interval_secs (both modes).
        #[arg(long, default_value_t = 10)]
        interval: u64,
    },
    /// Fleet rollouts (#9): swap skew across the fleet, `rollout = "independent"` against `"fleet"`.
    Skew {
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Fleet rollouts (#9): rollback to (and forward from) a version every replica keeps on disk.
    Rollback {
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Closed swarm (#11): 1→1 transfer as a plain torrent against an SSL torrent (TLS peer wire).
    Tls {
        #[arg(long, default_value = "1G")]
        size: ByteSize,
    },
    /// Closed swarm (#11): the master's tracker with a swarm token, without, the standalone tracker and opentracker.
    TrackerToken {
        #[arg(long, default_value_t = 5000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Rounds over the four trackers; the median is reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    std::fs::create_dir_all(&cli.work)?;
    match &cli.cmd {
        Cmd::Create { size } => create::bench_create(&cli, size.0),
        Cmd::Tracker { rate, seconds } => tracker::bench_tracker(&cli, *rate, *seconds),
        Cmd::Transfer { size } => transfer::bench_transfer(&cli, size.0),
        Cmd::Swarm {
            size,
            leechers,
            mbit,
            no_libtorrent,
            repeat,
        } => swarm::bench_swarm(&cli, size.0, *leechers, *mbit, *no_libtorrent, *repeat),
        Cmd::Publish { size, leechers } => publish::bench_publish(&cli, size.0, *leechers),
        Cmd::Replicate {
            size,
            replicas,
            mbit,
            no_http,
        } => replicate::bench_replicate(&cli, size.0, *replicas, *mbit, *no_http),
        Cmd::PublishCost {
            size,
            change_pct,
            repeat,
        } => publish_cost::bench_publish_cost(&cli, size.0, *change_pct, *repeat),
        Cmd::Files {
            counts,
            replicas,
            repeat,
        } => files::bench_files(&cli, counts, *replicas, *repeat),
        Cmd::Versions {
            versions,
            keep,
            size,
            segment,
            at,
            keep_snapshots,
        } => versions::bench_versions(
            &cli,
            *versions,
            *keep,
            size.0,
            segment.0,
            at,
            *keep_snapshots,
        ),
        Cmd::Big {
            size,
            files,
            replicas,
            compressible,
        } => big::bench_big(&cli, size.0, *files, *replicas, *compressible),
        Cmd::Freshness { fleet: f, interval } => freshness::bench_freshness(
            &cli,
            f.size.0,
            f.replicas,
            f.change_pct,
            f.repeat,
            *interval,
        ),
        Cmd::Skew { fleet: f } => {
            skew::bench_skew(&cli, f.size.0, f.replicas, f.change_pct, f.repeat)
        }
        Cmd::Rollback { fleet: f } => {
            rollback::bench_rollback(&cli, f.size.0, f.replicas, f.change_pct, f.repeat)
        }
        Cmd::Tls { size } => tls::bench_tls(&cli, size.0),
        Cmd::TrackerToken {
            rate,
            seconds,
            rounds,
        } => tracker_token::bench_tracker_token(&cli, *rate, *seconds, *rounds),
    }
}
