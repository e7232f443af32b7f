//! End-to-end and interop tests: the real `indexswarm` binary against real
//! peers (aria2, python3-libtorrent, opentracker, mktorrent, rqbit, Transmission)
//! on loopback, or in network namespaces where a peer refuses loopback.
//! `.ci/run` installs the reference tools; a missing tool fails its test.

mod architecture;
mod bounds;
mod closed;
mod common;
mod dashboard;
mod deploy;
mod events;
mod fuzz;
mod hardening;
mod hostile;
mod indexes;
mod integrity;
mod interop;
mod master;
mod netns;
mod replica;
mod rollout;
mod search;
mod stalls;
mod strangers;
mod swarm;
mod torrents;
mod tracker;
