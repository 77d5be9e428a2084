//! Seeding the served model while serving it: the swarm crate's `seed` runs as a task of the
//! server's runtime, and its events are kept here for `/health` and the log.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use swarmlm_swarm::{Event, SeedOptions, SeedTarget};
use tokio::sync::watch;

/// What `/health` says about seeding.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SeedStatus {
    /// `off` (--no-seed), `starting` (verifying), `seeding`, `stopped` or `error`.
    pub state: &'static str,
    pub info_hash: Option<String>,
    pub magnet: Option<String>,
    /// Address peers connect to.
    pub listen: Option<String>,
    pub peers: usize,
    pub uploaded_bytes: u64,
    pub error: Option<String>,
}

impl SeedStatus {
    pub fn off() -> SeedStatus {
        SeedStatus {
            state: "off",
            ..SeedStatus::default()
        }
    }
}

/// The seeding task and its latest status.
pub struct Seeder {
    status: Arc<Mutex<SeedStatus>>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Seeder {
    /// Starts seeding `target` on the current runtime. Verification runs first (the swarm
    /// crate refuses to seed a folder that does not match its manifest); until then the state
    /// is `starting`.
    pub fn start(target: SeedTarget, opts: SeedOptions) -> Seeder {
        let status = Arc::new(Mutex::new(SeedStatus {
            state: "starting",
            info_hash: Some(hex::encode(target.manifest.info_hash)),
            ..SeedStatus::default()
        }));
        let (stop, mut stop_rx) = watch::channel(false);
        let st = status.clone();
        let task = tokio::spawn(async move {
            let last_log = Mutex::new(Instant::now() - Duration::from_secs(60));
            let emit = |e: &Event| record(&st, &last_log, e);
            let shutdown = async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            };
            let result = swarmlm_swarm::seed(target, opts, &emit, shutdown).await;
            let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
            match result {
                Ok(()) => s.state = "stopped",
                Err(e) => {
                    tracing::error!("seeding stopped: {e}");
                    s.state = "error";
                    s.error = Some(e.to_string());
                }
            }
        });
        Seeder {
            status,
            stop,
            task: Mutex::new(Some(task)),
        }
    }

    pub fn status(&self) -> SeedStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops seeding and waits for the torrent session to close.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = task {
            if tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .is_err()
            {
                tracing::warn!("the seeding session did not stop within 10 s");
            }
        }
    }
}

fn record(status: &Mutex<SeedStatus>, last_log: &Mutex<Instant>, e: &Event) {
    let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
    match e {
        Event::Seeding {
            name,
            info_hash,
            magnet,
            listen,
            ..
        } => {
            s.state = "seeding";
            s.info_hash = Some(info_hash.clone());
            s.magnet = Some(magnet.clone());
            s.listen = Some(listen.clone());
            tracing::info!("seeding {name} ({info_hash}) on {listen}");
            tracing::info!("magnet: {magnet}");
        }
        Event::SeedProgress {
            peers,
            uploaded_bytes,
            ..
        } => {
            s.peers = *peers;
            s.uploaded_bytes = *uploaded_bytes;
            let mut last = last_log.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() >= Duration::from_secs(30) && (*peers > 0 || *uploaded_bytes > 0) {
                *last = Instant::now();
                tracing::info!("seeding: {peers} peer(s), {uploaded_bytes} bytes up");
            }
        }
        _ => {}
    }
}
