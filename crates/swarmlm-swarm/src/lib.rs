//! swarmlm-swarm: see docs/ARCHITECTURE.md.

mod bencode;
pub mod create;
pub mod torrent;
