//! swarmlm-swarm: models over BitTorrent, with every byte verified.
//!
//! [`fetch`] turns a magnet link, a .torrent or a manifest into a verified model folder;
//! [`seed`] serves a verified folder back. Both run on librqbit 9.1.0 through
//! [`session::SwarmSession`], which sets every switch that decides what the process talks to,
//! and on the runtime from [`rejects::transfer_runtime`], which notices peers that send bad
//! pieces.

mod bencode;
pub mod create;
pub mod error;
pub mod events;
pub mod fetch;
pub mod hasher;
pub mod rejects;
pub mod seed;
pub mod session;
pub mod torrent;
pub mod util;

pub use error::SwarmError;
pub use events::{Event, PeerReport};
pub use fetch::{fetch, FetchOptions, FetchOutcome, Source};
pub use rejects::{runtime, transfer_runtime, SwarmRuntime};
pub use seed::{seed, shutdown_signal, SeedOptions, SeedTarget};
pub use session::{SessionConfig, SwarmSession};
