//! One place that builds librqbit sessions, so every switch that decides what we talk to is
//! set explicitly and the same way for fetch and seed.
//!
//! librqbit's defaults are unsafe for us: public DHT and local service discovery on (trap 9),
//! persistence in a folder of its choosing that can claim folders it did not create (trap 8),
//! a per-torrent `disable_trackers` that does nothing (trap 10, so trackers are switched at
//! session level here), and a blocking-thread pool of 8 that deadlocks under load (trap 11).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use librqbit::{
    AddTorrent, AddTorrentOptions, DhtSessionConfig, ListenerMode, ListenerOptions, ManagedTorrent,
    Session, SessionOptions, SessionPersistenceConfig,
};

use crate::error::SwarmError;

/// librqbit's blocking-work semaphore (hash checks, disk writes, streams): how many of those
/// may run at once, each through `block_in_place`, on the multi-threaded [`crate::runtime`]
/// (on [`crate::transfer_runtime`] they run inline and take no permit). Trap 11: every open
/// `FileStream` holds a permit, so this must be at least open streams + 8; swarmlm opens none.
/// More than 8 only added threads handing the runtime's workers back and forth: with 32
/// permits (and tokio's default of 512 blocking threads) a 1 GB loopback fetch made 4x the
/// context switches of the rqbit CLI and took 6.0-6.6 s against 4.4-5.7 s with 8
/// (BENCHMARKS.md, Swarm).
pub const RUNTIME_WORKER_THREADS: usize = 8;

/// The cap on the tokio runtime's blocking threads ([`crate::runtime`]): each
/// `block_in_place` above hands its worker to one of them, and our own `spawn_blocking`
/// work (a full verify) takes one more. The rqbit CLI's default, with room for ours.
pub const RUNTIME_BLOCKING_THREADS: usize = RUNTIME_WORKER_THREADS + 4;

/// How long [`SwarmSession::stop`] lets the cancelled tasks run before returning.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_millis(50);

/// What a session may talk to and where it keeps its state.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Where to accept peer connections (TCP only). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Mainline DHT (public network). Off in tests.
    pub dht: bool,
    /// Local service discovery (LAN multicast). Off in tests.
    pub lsd: bool,
    /// UPnP port forwarding on the gateway. Off in tests.
    pub upnp: bool,
    /// Contact the trackers named in torrents and magnets, and those below.
    pub trackers_enabled: bool,
    /// Extra trackers announced for every torrent of this session.
    pub extra_trackers: Vec<url::Url>,
    /// Folder this session's librqbit persistence (fast-resume bitfields, session list) lives
    /// in. `None`: no persistence at all, every add starts with a full check of what is on
    /// disk. Always a folder we own (trap 8), never librqbit's default.
    pub persistence_dir: Option<PathBuf>,
    /// Upload rate limit in bytes per second.
    pub upload_limit_bps: Option<u32>,
    /// Download rate limit in bytes per second.
    pub download_limit_bps: Option<u32>,
}

impl SessionConfig {
    /// For a person on the internet: DHT and trackers on, listen on all interfaces.
    pub fn user(dht: bool) -> Self {
        SessionConfig {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            dht,
            lsd: false,
            upnp: false,
            trackers_enabled: true,
            extra_trackers: Vec::new(),
            persistence_dir: None,
            upload_limit_bps: None,
            download_limit_bps: None,
        }
    }

    /// For tests: TCP on 127.0.0.1 with a random port, nothing that broadcasts or reaches
    /// beyond 127.0.0.0/8 (trackers stay on; tests only ever name loopback trackers).
    pub fn loopback() -> Self {
        SessionConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            dht: false,
            lsd: false,
            upnp: false,
            trackers_enabled: true,
            extra_trackers: Vec::new(),
            persistence_dir: None,
            upload_limit_bps: None,
            download_limit_bps: None,
        }
    }
}

/// The address to listen on and the port to announce to trackers.
///
/// librqbit announces the port it bound — except on a loopback address, where it announces
/// none and its tracker client then sends its default, 4240 (librqbit 9.1.0, `listen.rs` and
/// `Session::make_peer_rx`). A loopback seeder was then counted by a tracker at a port nobody
/// listens on, and leechers that found it only through the tracker never connected. So on
/// loopback the port is chosen here (a free one when 0 is asked) and announced explicitly.
fn announce_address(listen: SocketAddr) -> Result<(SocketAddr, Option<u16>), SwarmError> {
    if !listen.ip().is_loopback() {
        return Ok((listen, None));
    }
    let port = if listen.port() == 0 {
        // Bound and released at once: another process taking it in between is the only race,
        // and then librqbit's own bind fails with a clear error.
        std::net::TcpListener::bind(listen)
            .and_then(|l| l.local_addr())
            .map_err(|e| SwarmError::Session {
                reason: format!("no free TCP port on {}: {e}", listen.ip()),
            })?
            .port()
    } else {
        listen.port()
    };
    Ok((SocketAddr::new(listen.ip(), port), Some(port)))
}

/// A running librqbit session built from a [`SessionConfig`].
pub struct SwarmSession {
    session: Arc<Session>,
    listen_addr: SocketAddr,
}

impl SwarmSession {
    /// Starts the session. `default_output` is where a torrent goes when an add does not
    /// name its own folder; every add in this crate names one, so it is only a safe fallback
    /// inside a folder we own.
    pub async fn start(config: &SessionConfig, default_output: &Path) -> Result<Self, SwarmError> {
        let dht = if config.dht {
            Some(DhtSessionConfig {
                bootstrap_addrs: None,
                port: None,
                // DHT routing tables are not worth a file in a folder we do not control.
                persistence: None,
            })
        } else {
            None
        };
        let persistence =
            config
                .persistence_dir
                .as_ref()
                .map(|folder| SessionPersistenceConfig::Json {
                    folder: Some(folder.clone()),
                });
        let ratelimits = librqbit::limits::LimitsConfig {
            upload_bps: config.upload_limit_bps.and_then(std::num::NonZeroU32::new),
            download_bps: config
                .download_limit_bps
                .and_then(std::num::NonZeroU32::new),
        };

        let (listen, announce_port) = announce_address(config.listen)?;
        let opts = SessionOptions {
            dht,
            disable_trackers: !config.trackers_enabled,
            fastresume: config.persistence_dir.is_some(),
            persistence,
            listen: Some(ListenerOptions {
                mode: ListenerMode::TcpOnly,
                listen_addr: listen,
                enable_upnp_port_forwarding: config.upnp,
                ipv4_only: listen.is_ipv4(),
                announce_port,
                ..Default::default()
            }),
            disable_local_service_discovery: !config.lsd,
            ipv4_only: listen.is_ipv4(),
            runtime_worker_threads: Some(RUNTIME_WORKER_THREADS),
            trackers: config.extra_trackers.iter().cloned().collect(),
            ratelimits,
            ..Default::default()
        };
        let session = Session::new_with_opts(default_output.to_path_buf(), opts)
            .await
            .map_err(|e| SwarmError::Session {
                reason: format!("{e:#}"),
            })?;
        let listen_addr = session.listen_addr().ok_or_else(|| SwarmError::Session {
            reason: "the session did not report a listen address".into(),
        })?;
        Ok(SwarmSession {
            session,
            listen_addr,
        })
    }

    /// The address peers can dial (the bound one, with the real port when 0 was asked).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// The librqbit session, for adding torrents.
    pub fn inner(&self) -> &Arc<Session> {
        &self.session
    }

    /// Adds a torrent (its .torrent bytes) and returns its handle. librqbit fails an add in
    /// two ways, an error or an answer without a handle; both become
    /// [`SwarmError::AddTorrent`] naming `info_hash`.
    pub async fn add_torrent_bytes(
        &self,
        torrent: Vec<u8>,
        opts: AddTorrentOptions,
        info_hash: &str,
    ) -> Result<Arc<ManagedTorrent>, SwarmError> {
        let added = self
            .session
            .add_torrent(AddTorrent::from_bytes(torrent), Some(opts))
            .await
            .map_err(|e| SwarmError::AddTorrent {
                info_hash: info_hash.to_string(),
                reason: format!("{e:#}"),
            })?;
        added.into_handle().ok_or_else(|| SwarmError::AddTorrent {
            info_hash: info_hash.to_string(),
            reason: "librqbit returned no handle".into(),
        })
    }

    /// Stops every torrent and the session's tasks.
    ///
    /// librqbit 9.1.0's `Session::stop` pauses the torrents and cancels the session's tasks at
    /// once, then sleeps a fixed second ("hopefully will be enough") for them to wind down.
    /// That second was a tenth of a 2 GB loopback fetch and is paid by every fetch, seed and
    /// demo on exit; nothing of ours needs it (a fetch has placed and recorded its files and
    /// removed its torrent before it stops, a seeder only reads). So the tasks get a short
    /// grace and the fixed sleep is cut off.
    pub async fn stop(&self) {
        let _ = tokio::time::timeout(STOP_GRACE, self.session.stop()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_listeners_announce_their_real_port() {
        let (addr, announce) = announce_address("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_eq!(addr.ip(), std::net::IpAddr::from(Ipv4Addr::LOCALHOST));
        assert_ne!(addr.port(), 0);
        assert_eq!(announce, Some(addr.port()));
        let fixed: SocketAddr = "127.0.0.1:45123".parse().unwrap();
        assert_eq!(announce_address(fixed).unwrap(), (fixed, Some(45123)));
        // Elsewhere librqbit announces the port it binds by itself.
        let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
        assert_eq!(announce_address(any).unwrap(), (any, None));
    }

    #[test]
    fn loopback_session_binds_127_0_0_1_and_talks_to_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let rt = crate::rejects::transfer_runtime().unwrap();
        rt.block_on(async {
            let cfg = SessionConfig::loopback();
            assert!(!cfg.dht && !cfg.lsd && !cfg.upnp);
            let s = SwarmSession::start(&cfg, dir.path()).await.unwrap();
            let addr = s.listen_addr();
            assert_eq!(addr.ip(), std::net::IpAddr::from(Ipv4Addr::LOCALHOST));
            assert_ne!(addr.port(), 0);
            assert!(s.inner().get_dht().is_none());
            // The port really accepts TCP.
            tokio::net::TcpStream::connect(addr).await.unwrap();
            // Without librqbit's fixed one-second sleep on stop.
            let stopping = std::time::Instant::now();
            s.stop().await;
            assert!(stopping.elapsed() < std::time::Duration::from_millis(600));
        });
        // Without persistence, librqbit wrote nothing into the default folder.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
