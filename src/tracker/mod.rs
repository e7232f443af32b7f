//! BitTorrent HTTP tracking: the server the master embeds (and
//! `indexswarm tracker` runs alone) and the client every session uses.
//!
//! `protocol` is pure encoding and decoding; `server` keeps the registry and
//! serves warp routes; `client` announces and yields peer addresses.

pub mod client;
pub mod protocol;
pub mod server;

pub use client::{
    announce, run_announce_loop, AnnounceConfig, AnnounceError, AnnounceSignals, TransferStats,
};
pub use protocol::{AnnounceRequest, AnnounceResponse, Event};
pub use server::{routes, Tracker, TrackerConfig};
