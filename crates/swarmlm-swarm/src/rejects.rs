//! Which peer sent which piece that failed its SHA-1 check.
//!
//! librqbit 9.1.0 drops a peer whose piece fails its hash, but its per-peer counters have no
//! "rejected" field: the only place the fact surfaces is one `warn!` event
//! ("checksum for piece=N did not validate", with the peer's address). A stall report must
//! name the bad peers (traps 12 and 14), so this module taps that event: [`transfer_runtime`]
//! and [`runtime`] build the tokio runtimes that drive librqbit with a thread-local tracing
//! dispatcher that records those events and forwards everything to whatever subscriber the
//! program installed.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Level, Metadata, Subscriber};
use tracing_core::span::Current;

/// Pieces rejected, per torrent (info hash, lowercase hex) and per peer address.
type Log = BTreeMap<String, BTreeMap<String, Vec<u32>>>;

fn log() -> &'static Mutex<Log> {
    static LOG: OnceLock<Mutex<Log>> = OnceLock::new();
    LOG.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// Pieces that failed their hash check, by peer address, for one torrent.
pub fn rejected_pieces(info_hash_hex: &str) -> BTreeMap<String, Vec<u32>> {
    let log = log().lock().unwrap_or_else(|p| p.into_inner());
    log.get(&info_hash_hex.to_ascii_lowercase())
        .cloned()
        .unwrap_or_default()
}

fn record_rejection(info_hash: &str, addr: &str, piece: u32) {
    let mut log = log().lock().unwrap_or_else(|p| p.into_inner());
    log.entry(info_hash.to_ascii_lowercase())
        .or_default()
        .entry(addr.to_string())
        .or_default()
        .push(piece);
}

/// The one librqbit event this tap cares about: a WARN from the live torrent state that
/// carries the peer address.
fn is_watched(meta: &Metadata<'_>) -> bool {
    *meta.level() == Level::WARN
        && meta.target().starts_with("librqbit::torrent_state::live")
        && meta.fields().field("addr").is_some()
        && meta.fields().field("info_hash").is_some()
}

#[derive(Default)]
struct Fields {
    message: String,
    addr: String,
    info_hash: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "addr" => self.addr = format!("{value:?}"),
            "info_hash" => self.info_hash = format!("{value:?}"),
            _ => {}
        }
    }
}

/// Parses "checksum for piece=N did not validate" into N.
fn rejected_piece_from_message(message: &str) -> Option<u32> {
    if !message.contains("did not validate") {
        return None;
    }
    let rest = message.split("piece=").nth(1)?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// A subscriber that records rejected pieces and forwards everything to `inner`.
struct Tap {
    inner: Dispatch,
    max_level: LevelFilter,
}

impl Subscriber for Tap {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        let inner = self.inner.register_callsite(meta);
        if is_watched(meta) {
            Interest::always()
        } else {
            inner
        }
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        is_watched(meta) || self.inner.enabled(meta)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.max_level)
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        self.inner.new_span(span)
    }

    fn record(&self, span: &Id, values: &Record<'_>) {
        self.inner.record(span, values)
    }

    fn record_follows_from(&self, span: &Id, follows: &Id) {
        self.inner.record_follows_from(span, follows)
    }

    fn event(&self, event: &Event<'_>) {
        if is_watched(event.metadata()) {
            let mut fields = Fields::default();
            event.record(&mut fields);
            if let Some(piece) = rejected_piece_from_message(&fields.message) {
                record_rejection(&fields.info_hash, &fields.addr, piece);
            }
        }
        if self.inner.enabled(event.metadata()) {
            self.inner.event(event)
        }
    }

    fn enter(&self, span: &Id) {
        self.inner.enter(span)
    }

    fn exit(&self, span: &Id) {
        self.inner.exit(span)
    }

    fn clone_span(&self, id: &Id) -> Id {
        self.inner.clone_span(id)
    }

    fn try_close(&self, id: Id) -> bool {
        self.inner.try_close(id)
    }

    fn current_span(&self) -> Current {
        self.inner.current_span()
    }
}

/// The tokio runtime librqbit runs on, with the rejection tap on every thread that runs its
/// tasks. Futures are driven through [`SwarmRuntime::block_on`], which puts the tap on the
/// calling thread too: on a current-thread runtime that thread runs every task.
pub struct SwarmRuntime {
    rt: tokio::runtime::Runtime,
    tap: Dispatch,
}

impl SwarmRuntime {
    /// Runs `future` to completion on this runtime, the rejection tap installed.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        tracing::dispatcher::with_default(&self.tap, || self.rt.block_on(future))
    }
}

/// The runtime for `fetch` and `seed`: one thread runs every librqbit task, and a piece's
/// disk write, SHA-1 check and upload read run inline on it.
///
/// On a multi-threaded runtime librqbit wraps each of those (one per 16 KiB block) in
/// `block_in_place`, which hands the worker's queue to another thread and back: a 2 GB
/// loopback fetch made 200k+ context switches in the leecher and as many in the seeder, and
/// the handoffs, not the hashing or the copies, bounded the transfer at ~165 MB/s on 2
/// cores. On this runtime librqbit calls them directly (its `BlockingSpawner` checks the
/// flavour), as the rqbit CLI does with `--single-thread-runtime`: ~360 MB/s, and the second
/// core is left to the SHA-256 hasher thread ([`crate::hasher`]) and the peer. The cost: a
/// long blocking step (librqbit's full re-check of a partial download on resume) holds the
/// thread, so the progress loop waits for it to end.
///
/// Call it after the program's tracing subscriber is installed: the tap forwards to the
/// subscriber that is the default at this moment.
pub fn transfer_runtime() -> std::io::Result<SwarmRuntime> {
    build(tokio::runtime::Builder::new_current_thread())
}

/// A multi-threaded runtime for processes that do more than transfer (the HTTP server):
/// librqbit's blocking steps then run through `block_in_place` and never hold up other
/// tasks, at the price of the handoffs described at [`transfer_runtime`].
pub fn runtime() -> std::io::Result<SwarmRuntime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.max_blocking_threads(crate::session::RUNTIME_BLOCKING_THREADS);
    build(builder)
}

fn build(mut builder: tokio::runtime::Builder) -> std::io::Result<SwarmRuntime> {
    let inner = tracing::dispatcher::get_default(|d| d.clone());
    let max_level = std::cmp::max(LevelFilter::current(), LevelFilter::WARN);
    let tap = Dispatch::new(Tap { inner, max_level });
    let thread_tap = tap.clone();
    let rt = builder
        .enable_all()
        .thread_name("swarmlm-net")
        .on_thread_start(move || {
            // The guard restores the previous default when dropped; the thread lives exactly
            // as long as the runtime needs the tap, so it is kept for the thread's lifetime.
            std::mem::forget(tracing::dispatcher::set_default(&thread_tap));
        })
        .build()?;
    Ok(SwarmRuntime { rt, tap })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_librqbit_rejection_message() {
        assert_eq!(
            rejected_piece_from_message(
                "checksum for piece=17 did not validate. disconnecting peer."
            ),
            Some(17)
        );
        assert_eq!(rejected_piece_from_message("piece=17 done"), None);
        assert_eq!(
            rejected_piece_from_message("checksum for piece= did not validate"),
            None
        );
    }

    #[test]
    fn records_per_torrent_and_peer() {
        record_rejection("ABCDEF", "127.0.0.1:9", 3);
        record_rejection("abcdef", "127.0.0.1:9", 5);
        record_rejection("abcdef", "127.0.0.1:10", 1);
        let got = rejected_pieces("AbCdEf");
        assert_eq!(got.get("127.0.0.1:9"), Some(&vec![3, 5]));
        assert_eq!(got.get("127.0.0.1:10"), Some(&vec![1]));
        assert!(rejected_pieces("00").is_empty());
    }

    fn warn_rejection(info_hash: &'static str, piece: u32) {
        tracing::warn!(
            target: "librqbit::torrent_state::live",
            id = 0,
            info_hash,
            addr = ?"127.0.0.1:4242".parse::<std::net::SocketAddr>().unwrap(),
            "checksum for piece={} did not validate. disconnecting peer.",
            piece
        );
    }

    #[test]
    fn tap_sees_events_on_runtime_threads() {
        // Multi-threaded: spawned tasks run on the runtime's workers.
        let rt = runtime().unwrap();
        rt.block_on(async {
            tokio::spawn(async { warn_rejection("feedbeef", 42) })
                .await
                .unwrap();
        });
        // The Debug rendering of a &str field keeps its quotes.
        let got = rejected_pieces("\"feedbeef\"");
        assert_eq!(got.get("127.0.0.1:4242"), Some(&vec![42]));

        // Current-thread: every task runs on the thread that called block_on, and the
        // blocking pool has threads of its own.
        let rt = transfer_runtime().unwrap();
        rt.block_on(async {
            tokio::spawn(async { warn_rejection("cafe0001", 7) })
                .await
                .unwrap();
            tokio::task::spawn_blocking(|| warn_rejection("cafe0001", 8))
                .await
                .unwrap();
        });
        let got = rejected_pieces("\"cafe0001\"");
        assert_eq!(got.get("127.0.0.1:4242"), Some(&vec![7, 8]));
        // Outside block_on the tap is not installed on this thread.
        warn_rejection("cafe0002", 9);
        assert!(rejected_pieces("\"cafe0002\"").is_empty());
    }
}
