//! indexswarm: replicate search-index snapshots from one master to many
//! replicas over BitTorrent.
//!
//! The crate map, in the direction data flows (each module uses only those
//! before it):
//!
//! - [`units`]: sizes and rates (`10M`).
//! - [`metainfo`]: torrents: build, parse, validate, piece ↔ file layout.
pub mod metainfo;
pub mod units;
pub mod tracker;
