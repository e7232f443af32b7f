//! The peer wire protocol: `codec` frames messages (pure bytes, every length
//! bounded), `connection` dials, handshakes and writes. Neither knows about
//! piece selection or choking; that is the swarm's business.

pub mod codec;
pub mod connection;
pub mod pex;
pub mod stream;
pub mod tls;

pub use codec::{BlockRef, Handshake, Message, PeerCodec};
