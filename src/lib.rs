//! indexswarm: replicate search-index snapshots from one master to many
//! replicas over BitTorrent.
//!
//! The crate map, in the direction data flows (each module uses only those
//! before it):
//!
//! - [`units`]: sizes and rates (`10M`).
//! - [`util`]: the leaf of shared helpers: atomic writes, links, RFC 3339
//!   time, directory locks, crash points for tests.
//! - [`metainfo`]: torrents: build, parse, validate, piece ↔ file layout.
//! - [`tracker`]: the HTTP tracker server and the announce client.
//! - [`source`]: load a torrent from a path or URL.
//! - [`telemetry`], [`shutdown`]: logging and the signal → cancellation path.
//! - [`cli`]: subcommands → library calls.
pub mod api;
pub mod cli;
pub mod config;
pub mod demo;
pub mod http;
pub mod master;
pub mod metainfo;
pub mod peer;
pub mod replica;
pub mod shutdown;
pub mod source;
pub mod storage;
pub mod swarm;
pub mod telemetry;
pub mod tls;
pub mod tracker;
pub mod units;
pub mod util;
