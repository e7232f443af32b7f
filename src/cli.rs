//! The command line: clap definitions and the glue from each subcommand to
//! the library. Errors come back as `anyhow` with context; `main` prints them
//! on one line and picks the exit code.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::builder::TypedValueParser as _;
use clap::{Args, Parser, Subcommand};

use crate::telemetry::LogFormat;
use crate::units::ByteSize;

mod toolkit;
use toolkit::{create, fetch, inspect, seed, tracker};

#[derive(Debug, Parser)]
#[command(
    name = "indexswarm",
    version,
    about = "Replicate search-index snapshots from a master to many replicas over BitTorrent",
    long_about = "Replicate search-index snapshots from a master to many replicas over BitTorrent.\n\n\
        Run `indexswarm demo` to watch a master and three replicas replicate two index versions on loopback.\n\
        Logs go to stderr (RUST_LOG honoured); data (info-hashes, JSON) goes to stdout."
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a .torrent of a directory (multi-file) or a file (single-file).
    Create(CreateArgs),
    /// Print a torrent's contents as one JSON object.
    Inspect(InspectArgs),
    /// Run a standalone HTTP tracker (the one the master embeds).
    Tracker(TrackerArgs),
    /// Verify data against a torrent, then seed it until interrupted.
    Seed(SeedArgs),
    /// Run the master sidecar: publish each complete snapshot directory as a version.
    Master(MasterArgs),
    /// Run the replica sidecar: poll the master, fetch new versions, swap them in.
    Replica(ReplicaArgs),
    /// Show the whole system: a master and three replicas on loopback replicate two index versions.
    Demo(crate::demo::DemoOptions),
    /// Download a torrent (resuming verified pieces), optionally keep seeding.
    /// Prints a JSON summary (bytes downloaded, resumed, seconds) on stdout when complete.
    Fetch(FetchArgs),
    /// The deployment's certificate authority: `ca init`, then `ca issue NAME`
    /// per node (files for tls_cert, tls_key and tls_ca).
    #[command(subcommand)]
    Ca(CaCommand),
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a CA in DIR: ca.pem (give it to every node as tls_ca) and
    /// ca.key (keep it private; only `ca issue` reads it).
    Init {
        /// Where the CA's files go (created if missing; never overwritten).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a certificate for the node NAME: DIR/NAME.pem (tls_cert: the
    /// certificate then the CA's) and DIR/NAME.key (tls_key, mode 0600).
    /// Good for HTTPS to NAME and for the peer wire of SSL torrents.
    Issue {
        /// The node's host name (also the file name).
        name: String,
        /// The CA's directory (from `ca init`).
        #[arg(long)]
        dir: PathBuf,
        /// Another name or IP address the node's API is reached by (repeatable).
        #[arg(long = "san", value_name = "NAME_OR_IP")]
        san: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Directory (or file) to share.
    pub path: PathBuf,
    /// Where to write the torrent [default: <NAME>.torrent in the current directory].
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Tracker announce URL; repeat for several (the first is `announce`).
    #[arg(long = "announce", value_name = "URL")]
    pub announce: Vec<String>,
    /// Piece length, a power of two from 16K to 64M [default: automatic, 256K–16M aiming at ≤ 4,000 pieces].
    #[arg(long, value_name = "SIZE")]
    pub piece_length: Option<ByteSize>,
    /// Torrent name [default: the directory's name].
    #[arg(long)]
    pub name: Option<String>,
    /// Insert BEP 47 padding files so every file starts on a piece boundary.
    #[arg(long)]
    pub align_files: bool,
    /// Hashing threads [default: one per core].
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Make an SSL torrent: this root certificate (PEM) goes in the info
    /// dictionary as ssl-cert; peers then speak TLS with certificates it signed.
    #[arg(long, value_name = "CA.pem")]
    pub ssl_cert: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A .torrent file or an http:// URL.
    pub torrent: String,
}

#[derive(Debug, Args)]
pub struct TrackerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:6969")]
    pub listen: SocketAddr,
    /// Track only the info-hashes in this file (40 hex digits a line; `#` comments).
    /// Re-read on SIGHUP. Without it the tracker is open.
    #[arg(long, value_name = "FILE")]
    pub whitelist: Option<PathBuf>,
    /// Announce interval in seconds that clients are asked to keep.
    #[arg(long, default_value_t = 60)]
    pub interval: u64,
    /// Honour the `ip` parameter of announces (only behind a proxy you trust).
    #[arg(long)]
    pub trust_ip_param: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Every setting can also come from the [master] section of the config file \
    or from INDEXSWARM_MASTER_<KEY>; flags win over the environment, which wins over the file."
)]
pub struct MasterArgs {
    /// TOML file with a [master] section (see config/master.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: crate::config::RawMaster,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Every setting can also come from the [replica] section of the config file \
    or from INDEXSWARM_REPLICA_<KEY>; flags win over the environment, which wins over the file."
)]
pub struct ReplicaArgs {
    /// TOML file with a [replica] section (see config/replica.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: crate::config::RawReplica,
}

#[derive(Debug, Args)]
pub struct SeedArgs {
    /// A .torrent file or an http:// URL.
    pub torrent: String,
    /// Directory holding the data: seeds PARENT/<torrent name>.
    #[arg(long, value_name = "PARENT")]
    pub dir: PathBuf,
    /// Peer port [default: 0.0.0.0:6881, or any free port if that is taken].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Upload limit in bytes/s (10M, 512K; 0 = unlimited).
    #[arg(long, default_value = "0")]
    pub upload_limit: ByteSize,
    /// Also connect to this peer directly (repeatable).
    #[arg(long = "peer", value_name = "HOST:PORT")]
    pub peers: Vec<String>,
    #[command(flatten)]
    pub limits: PeerLimits,
    #[command(flatten)]
    pub tls: PeerTlsArgs,
}

/// This node's certificate, for SSL torrents (`seed` and `fetch`).
#[derive(Debug, Args)]
pub struct PeerTlsArgs {
    /// Certificate (PEM, signed by the torrent's ssl-cert CA) for SSL torrents.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl PeerTlsArgs {
    fn identity(&self) -> Result<Option<std::sync::Arc<crate::peer::tls::PeerIdentity>>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Ok(Some(std::sync::Arc::new(
                crate::peer::tls::PeerIdentity::load(c, k)?,
            ))),
            _ => Ok(None),
        }
    }
}

/// Connection limits of `seed` and `fetch` (the sidecars take the same
/// names in their config).
#[derive(Debug, Args)]
pub struct PeerLimits {
    /// Connections per torrent; when full, an idle peer is evicted for a newcomer.
    #[arg(long, default_value_t = crate::swarm::DEFAULT_MAX_PEERS,
          value_parser = clap::value_parser!(u32).range(1..=10_000).map(|v| v as usize))]
    pub max_peers: usize,
    /// Connections per remote IP address per torrent.
    #[arg(long, default_value_t = crate::swarm::DEFAULT_MAX_PEERS_PER_IP,
          value_parser = clap::value_parser!(u32).range(1..=10_000).map(|v| v as usize))]
    pub max_peers_per_ip: usize,
    /// Peer connections across every torrent of the process.
    #[arg(long, default_value_t = crate::swarm::DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u32).range(1..=100_000).map(|v| v as usize))]
    pub max_connections: usize,
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// A .torrent file or an http:// URL.
    pub torrent: String,
    /// Directory to download into: the data lands in PARENT/<torrent name>.
    #[arg(long, value_name = "PARENT")]
    pub dir: PathBuf,
    /// Peer port [default: 0.0.0.0:6881, or any free port if that is taken].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Connect to this peer directly (repeatable; no tracker needed).
    #[arg(long = "peer", value_name = "HOST:PORT")]
    pub peers: Vec<String>,
    /// Keep seeding after the download completes, until interrupted.
    #[arg(long)]
    pub seed: bool,
    /// Download limit in bytes/s (0 = unlimited).
    #[arg(long, default_value = "0")]
    pub download_limit: ByteSize,
    /// Upload limit in bytes/s (0 = unlimited).
    #[arg(long, default_value = "0")]
    pub upload_limit: ByteSize,
    /// Seconds without a verified piece before the download reports a
    /// stall (with the reason) and re-announces and redials (0 = never).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub stall_secs: u64,
    #[command(flatten)]
    pub limits: PeerLimits,
    #[command(flatten)]
    pub tls: PeerTlsArgs,
}

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Create(a) => create(a).await,
        Command::Inspect(a) => inspect(a).await,
        Command::Tracker(a) => tracker(a).await,
        Command::Seed(a) => seed(a).await,
        Command::Fetch(a) => fetch(a).await,
        Command::Master(a) => master(a).await,
        Command::Replica(a) => replica(a).await,
        Command::Demo(a) => crate::demo::run(a).await,
        Command::Ca(c) => ca(c),
    }
}

fn ca(c: CaCommand) -> Result<()> {
    match c {
        CaCommand::Init { dir } => {
            crate::tls::ca_init(&dir)?;
            println!("{}", dir.join("ca.pem").display());
        }
        CaCommand::Issue { name, dir, san } => {
            crate::tls::ca_issue(&dir, &name, &san)?;
            println!("{}", dir.join(format!("{name}.pem")).display());
        }
    }
    Ok(())
}

async fn replica(a: ReplicaArgs) -> Result<()> {
    let file = match &a.config {
        Some(p) => crate::config::ConfigFile::load(p)?,
        None => crate::config::ConfigFile::default(),
    };
    let cfg = file
        .replica
        .overlay(a.settings)
        .validate_with(&file.index)?;
    let shutdown = crate::shutdown::on_signal();
    let replica = crate::replica::ReplicaSet::start(cfg.clone())
        .await
        .context("cannot start the replica")?;
    let tls = https(&cfg.security)?;
    let (addr, server) = crate::http::serve(
        crate::http::replica::routes(replica.clone()),
        cfg.http_listen,
        tls,
        shutdown.clone(),
    )?;
    let names: Vec<&str> = cfg.indexes.iter().map(|i| i.index.as_str()).collect();
    let master = cfg
        .indexes
        .first()
        .map(|i| i.master_url.as_str())
        .unwrap_or_default();
    tracing::info!(
        "replica API on {}://{addr}, master {master}, indexes {}",
        if cfg.security.tls.is_some() {
            "https"
        } else {
            "http"
        },
        names.join(", ")
    );
    let server = tokio::spawn(server);
    replica.run(shutdown).await;
    let _ = server.await;
    Ok(())
}

/// The HTTPS configuration, when `tls_cert` and `tls_key` are set.
fn https(
    sec: &crate::config::security::Security,
) -> Result<Option<std::sync::Arc<rustls::ServerConfig>>> {
    match &sec.tls {
        Some(files) => Ok(Some(
            crate::tls::https_server(&files.cert, &files.key).context("cannot set up HTTPS")?,
        )),
        None => Ok(None),
    }
}

async fn master(a: MasterArgs) -> Result<()> {
    let file = match &a.config {
        Some(p) => crate::config::ConfigFile::load(p)?,
        None => crate::config::ConfigFile::default(),
    };
    let cfg = file.master.overlay(a.settings).validate_with(&file.index)?;
    let shutdown = crate::shutdown::on_signal();
    let master = crate::master::Master::start(cfg.clone())
        .await
        .context("cannot start the master")?;
    if cfg.api_token.is_none() {
        tracing::warn!(
            "no api_token: POST /snapshot, activate, pause and resume accept requests from loopback only"
        );
    }
    let tls = https(&cfg.security)?;
    let (addr, server) = crate::http::serve(
        crate::http::master::routes(master.clone()),
        cfg.http_listen,
        tls,
        shutdown.clone(),
    )?;
    tracing::info!(
        "master API and tracker on {}://{addr} (public URL {})",
        if cfg.security.tls.is_some() {
            "https"
        } else {
            "http"
        },
        cfg.public_url
    );
    let server = tokio::spawn(server);
    master.run(shutdown).await;
    let _ = server.await;
    Ok(())
}
