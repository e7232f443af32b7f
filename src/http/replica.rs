//! The replica's API (filled in with the replica sidecar).
