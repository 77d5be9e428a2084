//! The expert pager: runs a model whose experts do not all fit in memory, under a hard budget
//! for resident expert bytes, with loads overlapping compute.
//!
//! Mixtral reads 2 of 8 experts per layer per token, so most expert bytes are idle at any
//! moment. The pager keeps at most `budget / expert_bytes` experts ("slots") resident; every
//! other expert's pages are out of the process (`MADV_DONTNEED`) and, by default, out of the
//! page cache (`POSIX_FADV_DONTNEED`), so the budget holds even inside a memory cgroup that
//! charges the page cache. Non-expert weights (attention, norms, embeddings, lm_head) are not
//! paged and are reported separately.
//!
//! Residency is explicit, never a side effect of a page fault:
//! - [`Pager::request`] asks for an expert and returns its [`Residency`] at once (`Ready`,
//!   `Loading`, `Failed`, or `NoRoom` when every slot is pinned or mid-load);
//! - background I/O threads perform the loads (`Queued → Loading → Ready | Failed`) by reading
//!   the expert's byte ranges into the page cache, piece by piece, several pieces in flight and
//!   the next expert's pieces queued right behind the last one's (see [`source`] for where bytes
//!   come from and how a swarm source would plug in);
//! - [`Pager::acquire`] pins an expert for compute, waiting on a condvar only if it is not
//!   ready yet; the pin is released when the returned [`Pinned`] is dropped.
//!
//! An expert the policy does not give a slot is **streamed** ([`Policy::LayerLru`] when one
//! token needs more experts than there are slots, [`Policy::LayerFreq`] always): the I/O
//! threads read it block by block (rows of w1 and w3, then rows of w2, see
//! [`source::stream_blocks`]), the compute thread computes each block as soon as it is in
//! ([`Pinned::wait_block`]) and drops it behind ([`Pinned::release_block`]). A streamed
//! expert needs only the read buffers' worth of memory, so every slot of the budget can hold
//! a stable expert.
//!
//! Which expert leaves when a slot is needed is the [`Policy`]. Which experts are loaded
//! *before* they are needed is the [`Prefetch`] mode: with `Lookahead`, while layer `L` runs, the
//! engine applies layer `L+1`'s router to the current hidden state, and the pager starts loading
//! the predicted experts on the I/O threads so that disk and compute overlap.
//!
//! The pager only ever changes residency: the weights are read through the same memory map
//! whether or not a pager is attached, so outputs are bit-identical under any budget.

pub(crate) mod lookahead;
mod size;
pub mod source;
mod stats;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use swarmlm_weights::{Advice, Checkpoint, WeightsError};

pub use size::{format_size, parse_size};
pub use source::{Block, ExpertSource, FileRange, Phase};
pub use stats::{LayerStats, PagerStats};

use crate::experts::ExpertWeights;
use crate::model::expert_tensor_names;
use source::{Files, Piece, READERS};

/// Per layer step, each expert's routing score is multiplied by this before the experts the
/// router picked get +1 ([`Policy::LayerFreq`]): a memory of ~20 tokens.
const SCORE_DECAY: f64 = 0.95;

/// Errors of the expert pager.
#[derive(Debug, thiserror::Error)]
pub enum PagerError {
    /// A size string (e.g. `--memory-budget`) could not be read.
    #[error("size {text:?}: expected {expected}")]
    BadSize { text: String, expected: String },
    /// The budget cannot hold the experts one layer uses for one token.
    #[error(
        "memory budget {budget} bytes ({budget_h}) is too small: one layer's top-{top_k} experts \
         take {minimum} bytes ({minimum_h}); the minimum budget is {minimum} bytes"
    )]
    BudgetTooSmall {
        budget: u64,
        budget_h: String,
        minimum: u64,
        minimum_h: String,
        top_k: usize,
    },
    /// An expert's bytes could not be obtained.
    #[error("expert {expert} of layer {layer} could not be loaded: {reason}")]
    LoadFailed {
        layer: usize,
        expert: usize,
        reason: String,
    },
    /// The I/O threads could not be set up.
    #[error("expert pager I/O threads: {0}")]
    Io(#[source] std::io::Error),
    /// Advice or eviction syscalls on the checkpoint failed.
    #[error(transparent)]
    Weights(#[from] WeightsError),
}

/// Which resident expert gives up its slot when another one needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Least recently used across all layers. When one token's working set (layers × top-k)
    /// exceeds the budget, a recency order evicts each expert just before its next use, so
    /// every request misses.
    Lru,
    /// Each layer owns an equal share of the slots and evicts its own least recently used
    /// expert, so each layer keeps a stable resident set and a tight budget still yields hits.
    /// Free slots are lent to any layer; a layer under its share takes slots back from layers
    /// over theirs.
    ///
    /// When a share would be smaller than top-k (fewer slots than layers × top-k), borrowing
    /// slots cascades: each layer takes for its second expert the slot the next layer kept, so
    /// every request misses (measured: 0 hits of 140 on 4 forged Mixtral layers with 4 slots).
    /// Then no slot is lent: a layer's shares are its stable experts (a miss replaces the
    /// layer's least recently used one) and an expert that finds no slot of its layer free is
    /// streamed: computed piece by piece as its bytes arrive, holding only the read buffers.
    LayerLru,
    /// Like [`Policy::LayerLru`]'s streaming mode at every budget below the whole model, with
    /// the stable experts chosen by routing frequency: each expert has a score (its picks,
    /// decayed by `SCORE_DECAY` per token) and a missed expert takes a slot only from a
    /// resident expert of its layer with a lower score; otherwise it is streamed. A recency
    /// order replaces a stable expert with every expert that misses; this keeps the
    /// often-picked ones.
    LayerFreq,
}

/// Whether experts are loaded ahead of the router's demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefetch {
    /// Load only on demand.
    Off,
    /// Predict layer `L+1`'s experts with its router while layer `L` runs, and load them.
    Lookahead,
}

/// Settings of a pager.
#[derive(Debug, Clone, PartialEq)]
pub struct PagerConfig {
    /// Bytes of expert weights resident (or being loaded) at once.
    pub budget_bytes: u64,
    pub policy: Policy,
    pub prefetch: Prefetch,
    /// Also evict evicted experts from the page cache (and every expert at start), so the
    /// budget bounds the page cache too. Off only for measurements that want warm reloads.
    pub drop_page_cache: bool,
}

impl PagerConfig {
    /// The defaults: [`Policy::LayerFreq`], [`Prefetch::Lookahead`], page cache dropped.
    ///
    /// LayerFreq measured on forged Mixtral (2 layers, BENCHMARKS.md): at 4 slots 0.968 tok/s
    /// and 31.9% hits against LayerLru's 0.736 and 21.7%; at 2 slots 20.3% hits against 12.8%.
    pub fn new(budget_bytes: u64) -> PagerConfig {
        PagerConfig {
            budget_bytes,
            policy: Policy::LayerFreq,
            prefetch: Prefetch::Lookahead,
            drop_page_cache: true,
        }
    }
}

/// The answer to "make this expert resident".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Residency {
    /// Resident now; reading it does not touch the disk.
    Ready,
    /// Queued or being read by the I/O threads.
    Loading,
    /// The last load failed (the reason); a new request retries.
    Failed(String),
    /// Every slot is pinned or mid-load; nothing was started.
    NoRoom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Absent,
    Queued,
    Loading,
    Ready,
    Failed,
    /// Being read and computed piece by piece, outside the slots (see [`Pinned::blocks`]).
    Streaming,
}

/// Where one piece of a streamed expert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PieceState {
    Unstarted,
    Reading,
    Read,
    /// Computed and dropped from memory.
    Released,
}

#[derive(Debug, Clone)]
struct Entry {
    status: Status,
    /// Logical time of the last demand request (recency for the policies).
    last_use: u64,
    /// Compute holds the weights (never evicted while > 0).
    pins: u32,
    /// Needed by the layer being run, or predicted for the next one: not evicted by other
    /// requests of the same step unless nothing else can go.
    protected: bool,
    /// Loaded by a prefetch and not yet used by a demand request.
    prefetched: bool,
    /// Evicted, its pages being dropped (outside the lock): it must not be read back until
    /// they are gone.
    evicting: bool,
    error: Option<String>,
    /// Routing frequency, decayed ([`Policy::LayerFreq`]).
    score: f64,
    /// While streaming: each piece of its stream plan.
    pieces: Vec<PieceState>,
}

/// One expert being read by the I/O threads.
struct Load {
    idx: usize,
    pieces: Vec<Piece>,
    /// Pieces handed to a thread so far.
    next: usize,
    /// Pieces handed out or not, whose read has not finished.
    outstanding: usize,
    error: Option<String>,
    /// A streamed expert: its pieces are computed and dropped one by one, outside the slots.
    stream: bool,
}

struct State {
    entries: Vec<Entry>,
    demand_q: VecDeque<usize>,
    prefetch_q: VecDeque<usize>,
    /// Experts being read, in the order they were started.
    active: VecDeque<Load>,
    /// Bytes of queued and loading experts no I/O thread has started reading yet.
    unstarted_bytes: u64,
    /// Bytes of evicted experts whose pages are still being dropped.
    evicting_bytes: u64,
    /// Bytes of streamed pieces being read or read and not yet computed and dropped.
    stream_held: u64,
    clock: u64,
    /// Experts queued, loading or ready (each takes one slot).
    resident: usize,
    peak: usize,
    per_layer: Vec<usize>,
    stats: Vec<LayerStats>,
    /// The last prediction for a layer, kept until that layer's routing to score it.
    predicted: Vec<Option<Vec<usize>>>,
    /// A prediction to turn into loads after the current layer's own demand is queued.
    pending_prefetch: Option<(usize, Vec<usize>)>,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Bytes of each expert (layer-major).
    bytes: Vec<u64>,
    /// Expert bytes the I/O threads may read beyond the budget while evicted experts' pages
    /// are still being dropped, or streamed pieces wait to be computed (see `take_piece`).
    slack: u64,
    /// The blocks every expert is streamed in (all experts have one shape).
    blocks: Vec<Block>,
    /// Bytes of one row of w1, w3 and w2.
    row_bytes: [u64; 3],
    /// The I/O threads wait here for work.
    work: Condvar,
    /// The compute thread waits here for loads to finish.
    done: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the counters half-updated in a way that
        // breaks memory safety; keep going with what is there.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Predictions scored per layer (4 decode tokens at top-2) before a layer may prefetch at all.
const PREFETCH_TRIAL: u64 = 8;
/// Below this fraction of correctly predicted experts (so far), a layer gets no prefetches.
const PREFETCH_MIN_ACCURACY: f64 = 0.8;

/// The accuracy gate: prefetch for a layer only once its lookahead has a track record of
/// `PREFETCH_TRIAL` scored guesses and at least 80% of all its guesses so far were right.
///
/// A wrong guess reads a whole expert nobody uses (hundreds of MB on Mixtral) and evicts a
/// resident one, and when the disk is the bottleneck a right guess saves no bytes, only some
/// waiting; so the gate starts closed and demands a high score. Measured on forged Mixtral
/// (random routers, lookahead right 36–43%): a gate open until 32 guesses were scored wasted 4
/// of 6 prefetches (1.154× the bytes of the misses); a gate at 50% after 8 guesses still opened
/// by luck and wasted 7 of 10 (1.098×). At 80% a 40%-accurate layer opens it by luck with
/// probability < 1% after 8 guesses, and closes it again as its score falls. Trained routers
/// (shakespeare-moe: 92–95%) open it after 4 tokens.
fn prefetch_gate_open(s: &LayerStats) -> bool {
    s.predicted >= PREFETCH_TRIAL && s.prediction_accuracy() >= PREFETCH_MIN_ACCURACY
}

/// Keeps the experts of one checkpoint resident under a budget. See the module docs.
pub struct Pager<'w> {
    checkpoint: &'w Checkpoint,
    cfg: PagerConfig,
    num_experts: usize,
    top_k: usize,
    expert_bytes: u64,
    slots: usize,
    quotas: Vec<usize>,
    /// Misses beyond a layer's share are streamed, not given a slot (see [`Policy::LayerLru`]
    /// and [`Policy::LayerFreq`]).
    streams: bool,
    /// Per expert (layer-major): its three tensor names (w1, w3, w2).
    names: Vec<[String; 3]>,
    /// Per expert: the byte length of each of those tensors.
    tensor_bytes: Vec<[u64; 3]>,
    /// Per expert: who shares each tensor's first and last page (see [`Edges`]).
    edges: Vec<[Edges; 3]>,
    non_expert_bytes: u64,
    shared: Arc<Shared>,
    io: Vec<JoinHandle<()>>,
}

/// Who else owns the partial first (`head`) and last (`tail`) page of one expert tensor.
/// Tensors do not start on page boundaries, so neighbours share pages; evicting only whole
/// pages (the default) would leave two pages per tensor ever used cached and, once touched,
/// mapped. `None`: a non-expert tensor shares the page, so it stays with the always-resident
/// weights. `Some(experts)`: the page may go when none of those experts is resident.
#[derive(Debug, Clone, Default)]
struct Edges {
    head: Option<Vec<usize>>,
    tail: Option<Vec<usize>>,
}

/// Finds, for every expert tensor, the owners of its edge pages. `owners[name]` is the
/// expert index of an expert tensor; other tensors are non-expert.
fn edge_owners(
    checkpoint: &Checkpoint,
    names: &[[String; 3]],
) -> Result<Vec<[Edges; 3]>, PagerError> {
    use std::collections::HashMap;
    let page = swarmlm_weights::page_size() as u64;
    let mut owner: HashMap<&str, (usize, usize)> = HashMap::new();
    for (x, trio) in names.iter().enumerate() {
        for (k, n) in trio.iter().enumerate() {
            owner.insert(n.as_str(), (x, k));
        }
    }
    // Per file, every non-empty tensor as (start, end, (expert, tensor) or None), in file order.
    type Placed = (u64, u64, Option<(usize, usize)>);
    let mut by_file: HashMap<PathBuf, Vec<Placed>> = HashMap::new();
    for name in checkpoint.tensor_names() {
        let loc = checkpoint.location(name)?;
        if loc.len > 0 {
            by_file.entry(loc.file).or_default().push((
                loc.offset,
                loc.offset + loc.len,
                owner.get(name).copied(),
            ));
        }
    }
    let mut edges = vec![<[Edges; 3]>::default(); names.len()];
    for list in by_file.values_mut() {
        list.sort_unstable_by_key(|t| t.0);
        for (i, &(start, end, who)) in list.iter().enumerate() {
            let Some((x, k)) = who else { continue };
            // Owners, other than expert x itself, of the page [p, p + page).
            let page_owners = |p: u64| -> Option<Vec<usize>> {
                let mut out = Vec::new();
                let before = list[..i].iter().rev().take_while(|t| t.1 > p);
                let after = list[i + 1..].iter().take_while(|t| t.0 < p + page);
                for &(_, _, w) in before.chain(after) {
                    match w {
                        None => return None,
                        Some((y, _)) if y != x && !out.contains(&y) => out.push(y),
                        Some(_) => {}
                    }
                }
                Some(out)
            };
            edges[x][k] = Edges {
                head: page_owners(start / page * page),
                tail: page_owners((end - 1) / page * page),
            };
        }
    }
    Ok(edges)
}

/// Candidates a slot may be taken from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tier {
    /// Unpinned, unprotected, not mid-read.
    Free,
    /// Also protected ones (a demand that cannot wait for anything else).
    Protected,
}

impl<'w> Pager<'w> {
    /// Sets up a pager for every expert of `checkpoint` and starts its I/O threads. Refuses a
    /// budget below one layer's top-k experts. With `drop_page_cache`, every expert's pages
    /// are dropped first, so residency starts at zero and the accounting matches the kernel's.
    pub fn new(checkpoint: &'w Checkpoint, cfg: PagerConfig) -> Result<Pager<'w>, PagerError> {
        let c = checkpoint.config();
        let (layers, num_experts, top_k) = (
            c.num_hidden_layers,
            c.num_local_experts,
            c.num_experts_per_tok,
        );
        let files: Vec<PathBuf> = checkpoint
            .files()
            .into_iter()
            .map(|p| p.to_path_buf())
            .collect();
        let mut names = Vec::with_capacity(layers * num_experts);
        let mut sources = Vec::with_capacity(layers * num_experts);
        let mut sizes = Vec::with_capacity(layers * num_experts);
        let mut tensor_bytes = Vec::with_capacity(layers * num_experts);
        let mut expert_bytes = 0u64;
        let mut expert_total = 0u64;
        for layer in 0..layers {
            for expert in 0..num_experts {
                let n = expert_tensor_names(layer, expert);
                let trio = [n.w1, n.w3, n.w2];
                let mut ranges = Vec::with_capacity(3);
                let mut bytes = 0;
                let mut lens = [0u64; 3];
                for (k, name) in trio.iter().enumerate() {
                    let loc = checkpoint.location(name)?;
                    let file = files.iter().position(|p| *p == loc.file).unwrap_or(0);
                    lens[k] = loc.len;
                    bytes += loc.len;
                    ranges.push(FileRange {
                        file,
                        offset: loc.offset,
                        len: loc.len,
                    });
                }
                expert_bytes = expert_bytes.max(bytes);
                expert_total += bytes;
                sizes.push(bytes);
                tensor_bytes.push(lens);
                names.push(trio);
                sources.push(ExpertSource::LocalFiles { ranges });
            }
        }
        let mut all_bytes = 0u64;
        let expert_names: std::collections::HashSet<&str> =
            names.iter().flatten().map(String::as_str).collect();
        let mut non_expert = Vec::new();
        for name in checkpoint.tensor_names() {
            all_bytes += checkpoint.location(name)?.len;
            if !expert_names.contains(name) {
                // A fault on a non-expert tensor must not read ahead into the experts next to
                // it (bytes the budget cannot see).
                checkpoint.advise(name, Advice::Random)?;
                non_expert.push(name);
            }
        }
        let minimum = expert_bytes * top_k as u64;
        if cfg.budget_bytes < minimum || expert_bytes == 0 {
            return Err(PagerError::BudgetTooSmall {
                budget: cfg.budget_bytes,
                budget_h: format_size(cfg.budget_bytes),
                minimum,
                minimum_h: format_size(minimum),
                top_k,
            });
        }
        let total = layers * num_experts;
        let slots = ((cfg.budget_bytes / expert_bytes) as usize).min(total);
        let streams = match cfg.policy {
            Policy::Lru => false,
            Policy::LayerLru => slots < layers * top_k,
            // Every expert fits: nothing needs streaming.
            Policy::LayerFreq => slots < total,
        };
        let quotas = (0..layers)
            .map(|l| slots / layers + usize::from(l < slots % layers))
            .collect();

        let edges = edge_owners(checkpoint, &names)?;
        for (trio, edges) in names.iter().zip(&edges) {
            for (name, edge) in trio.iter().zip(edges) {
                // Faults on a page the pager did not load (e.g. reclaimed under pressure)
                // must not read ahead into neighbouring experts.
                checkpoint.advise(name, Advice::Random)?;
                if cfg.drop_page_cache {
                    // Nothing is resident yet: only pages shared with non-expert tensors stay.
                    checkpoint.drop_page_cache_edges(
                        name,
                        edge.head.is_some(),
                        edge.tail.is_some(),
                    )?;
                } else {
                    checkpoint.advise(name, Advice::DontNeed)?;
                }
            }
        }

        let state = State {
            entries: vec![
                Entry {
                    status: Status::Absent,
                    last_use: 0,
                    pins: 0,
                    protected: false,
                    prefetched: false,
                    evicting: false,
                    error: None,
                    score: 0.0,
                    pieces: Vec::new(),
                };
                total
            ],
            demand_q: VecDeque::new(),
            prefetch_q: VecDeque::new(),
            active: VecDeque::new(),
            unstarted_bytes: 0,
            evicting_bytes: 0,
            stream_held: 0,
            clock: 0,
            resident: 0,
            peak: 0,
            per_layer: vec![0; layers],
            stats: vec![LayerStats::default(); layers],
            predicted: vec![None; layers],
            pending_prefetch: None,
            shutdown: false,
        };
        let chunk = source::chunk_for_budget(cfg.budget_bytes);
        // Streamed pieces are half a read piece: a gate/up block (w1 and w3 rows) is one
        // piece's worth, so the slack holds the block being computed and 3 pieces in flight.
        let (hsz, isz) = (c.hidden_size, c.intermediate_size);
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            bytes: sizes,
            slack: (READERS * chunk) as u64,
            blocks: source::stream_blocks(isz, hsz, chunk / 2),
            row_bytes: [2 * hsz as u64, 2 * hsz as u64, 2 * isz as u64],
            work: Condvar::new(),
            done: Condvar::new(),
        });
        let reader = Arc::new(Files::open(&files).map_err(PagerError::Io)?);
        if cfg.drop_page_cache {
            // Loading the model faulted its non-expert tensors in with the device's readahead
            // (often MiBs around each fault, in large folios that also hold expert bytes); a
            // mapped folio cannot be dropped. Unmap them, drop the files whole, then read the
            // non-expert tensors back below, exactly (random advice: no readahead).
            for name in &non_expert {
                checkpoint.drop_page_cache(name)?;
            }
            reader.drop_all().map_err(PagerError::Io)?;
        }
        // The non-expert tensors stay resident: read them in now, whole.
        for name in &non_expert {
            checkpoint.advise(name, Advice::WillNeed)?;
        }
        let sources = Arc::new(sources);
        let mut io = Vec::with_capacity(READERS);
        for i in 0..READERS {
            let (sh, sources, files) = (
                Arc::clone(&shared),
                Arc::clone(&sources),
                Arc::clone(&reader),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("swarmlm-pager-io{i}"))
                .spawn(move || io_loop(sh, sources, files, chunk, num_experts));
            match spawned {
                Ok(h) => io.push(h),
                Err(e) => {
                    stop(&shared, &mut io);
                    return Err(PagerError::Io(e));
                }
            }
        }
        Ok(Pager {
            checkpoint,
            cfg,
            num_experts,
            top_k,
            expert_bytes,
            slots,
            quotas,
            streams,
            names,
            tensor_bytes,
            edges,
            non_expert_bytes: all_bytes - expert_total,
            shared,
            io,
        })
    }

    /// The settings this pager runs with.
    pub fn config(&self) -> &PagerConfig {
        &self.cfg
    }

    /// Bytes of one expert (w1 + w3 + w2).
    pub fn expert_bytes(&self) -> u64 {
        self.expert_bytes
    }

    /// The smallest budget accepted for this checkpoint (one layer's top-k experts).
    pub fn minimum_budget(&self) -> u64 {
        self.expert_bytes * self.top_k as u64
    }

    /// Experts resident at once under the budget.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The three tensor names (w1, w3, w2) of an expert, for residency checks.
    pub fn tensor_names(&self, layer: usize, expert: usize) -> &[String; 3] {
        &self.names[layer * self.num_experts + expert]
    }

    /// A snapshot of the accounting.
    pub fn stats(&self) -> PagerStats {
        let st = self.shared.lock();
        PagerStats {
            layers: st.stats.clone(),
            budget_bytes: self.cfg.budget_bytes,
            expert_bytes: self.expert_bytes,
            slots: self.slots,
            resident_expert_bytes: st.resident as u64 * self.expert_bytes,
            resident_expert_bytes_peak: st.peak as u64 * self.expert_bytes,
            non_expert_bytes: self.non_expert_bytes,
        }
    }

    /// Where `(layer, expert)` stands now, without changing anything.
    pub fn residency(&self, layer: usize, expert: usize) -> Residency {
        let st = self.shared.lock();
        residency_of(&st.entries[layer * self.num_experts + expert])
    }

    /// Makes `(layer, expert)` resident: returns at once with where it stands, starting a
    /// load (and evicting an unpinned expert if the budget needs it) when it is absent.
    pub fn request(&self, layer: usize, expert: usize) -> Result<Residency, PagerError> {
        let mut st = self.shared.lock();
        let idx = layer * self.num_experts + expert;
        st.clock += 1;
        st.entries[idx].last_use = st.clock;
        let mut victims = Vec::new();
        let r = match st.entries[idx].status {
            Status::Absent | Status::Failed => {
                if self.make_room(&mut st, idx, Tier::Protected, &mut victims) {
                    self.start_load(&mut st, idx, false);
                    Residency::Loading
                } else {
                    Residency::NoRoom
                }
            }
            _ => residency_of(&st.entries[idx]),
        };
        drop(st);
        self.drop_victims(&victims)?;
        Ok(r)
    }

    /// The start of a layer's expert work: `needed` are the experts the router picked, in
    /// expert order (the order they are computed in, and the order the reference LRU
    /// statistics of shakespeare-moe were computed in). Counts hits and misses and queues loads request by request,
    /// as a plain LRU sees them (an expert requested earlier in the list is not evicted by a
    /// later one; one not yet requested may be), then turns a pending lookahead prediction into
    /// loads. The evicted experts' pages are dropped last, outside the lock, while the I/O
    /// threads already read the new ones (the page cache holds at most the budget plus the
    /// read buffers' size of expert bytes meanwhile: see `take_piece`).
    pub fn begin_layer(&self, layer: usize, needed: &[usize]) -> Result<(), PagerError> {
        let mut victims = Vec::new();
        self.plan_layer(layer, needed, &mut victims);
        self.drop_victims(&victims)
    }

    /// The bookkeeping of [`Pager::begin_layer`], under the lock; evicted experts go to
    /// `victims`.
    fn plan_layer(&self, layer: usize, needed: &[usize], victims: &mut Vec<usize>) {
        let mut st = self.shared.lock();
        let base = layer * self.num_experts;
        for e in &mut st.entries[base..base + self.num_experts] {
            e.protected = false;
            e.score *= SCORE_DECAY;
        }
        for &e in needed {
            st.entries[base + e].score += 1.0;
        }
        let picks = &mut st.stats[layer].picks;
        picks.resize(self.num_experts, 0);
        for &e in needed {
            picks[e] += 1;
        }
        if self.streams {
            // No expert this layer needs may give its slot to another it needs: evicted, it
            // would be streamed while its pages are still being dropped, and the streams
            // queued behind it would take the read window first (see `take_piece`).
            for &e in needed {
                st.entries[base + e].protected = true;
            }
        }
        if let Some(pred) = st.predicted[layer].take() {
            let correct = pred.iter().filter(|e| needed.contains(e)).count();
            let s = &mut st.stats[layer];
            s.predicted += pred.len() as u64;
            s.predicted_correct += correct as u64;
        }
        for &e in needed {
            let idx = base + e;
            st.clock += 1;
            st.entries[idx].last_use = st.clock;
            st.entries[idx].protected = true;
            match st.entries[idx].status {
                Status::Ready | Status::Loading | Status::Queued | Status::Streaming => {
                    st.stats[layer].hits += 1;
                    if st.entries[idx].prefetched {
                        st.entries[idx].prefetched = false;
                        st.stats[layer].prefetch_hits += 1;
                        promote(&mut st, idx);
                    }
                }
                Status::Absent | Status::Failed => {
                    st.stats[layer].misses += 1;
                    if !self.streams {
                        if self.make_room(&mut st, idx, Tier::Free, victims) {
                            self.start_load(&mut st, idx, false);
                        }
                    } else if self.admit(&mut st, idx, victims) {
                        self.start_load(&mut st, idx, false);
                    } else {
                        st.stats[layer].streamed += 1;
                        self.start_stream(&mut st, idx);
                    }
                }
            }
        }
        if let Some((next, pred)) = st.pending_prefetch.take() {
            // A layer whose predictions mostly miss would only read experts nobody uses and
            // evict useful ones: see `prefetch_gate_open`.
            if !prefetch_gate_open(&st.stats[next]) {
                return;
            }
            let nbase = next * self.num_experts;
            for &e in &pred {
                let idx = nbase + e;
                st.entries[idx].protected = true;
                let absent = matches!(st.entries[idx].status, Status::Absent | Status::Failed);
                let room = |st: &mut State, victims: &mut Vec<usize>| {
                    if self.streams {
                        self.admit(st, idx, victims)
                    } else {
                        self.make_room(st, idx, Tier::Free, victims)
                    }
                };
                if absent && room(&mut st, victims) {
                    self.start_load(&mut st, idx, true);
                    st.entries[idx].prefetched = true;
                    st.stats[next].prefetch_issued += 1;
                }
            }
        }
    }

    /// Records the lookahead's prediction for `layer` (scored at that layer's routing) and, with
    /// [`Prefetch::Lookahead`], schedules loads for it at the next [`Pager::begin_layer`].
    pub fn predict(&self, layer: usize, experts: &[usize]) {
        let mut st = self.shared.lock();
        st.predicted[layer] = Some(experts.to_vec());
        if self.cfg.prefetch == Prefetch::Lookahead {
            st.pending_prefetch = Some((layer, experts.to_vec()));
        }
    }

    /// Pins `(layer, expert)` for compute, loading it if needed and waiting until it is ready.
    pub fn acquire<'p>(
        &'p self,
        layer: usize,
        expert: usize,
        weights: ExpertWeights<'w>,
    ) -> Result<Pinned<'p, 'w>, PagerError> {
        let idx = layer * self.num_experts + expert;
        let mut st = self.shared.lock();
        let mut waited: Option<Instant> = None;
        let mut attempted = false;
        loop {
            match st.entries[idx].status {
                Status::Ready | Status::Streaming => {
                    let streamed = st.entries[idx].status == Status::Streaming;
                    if !streamed {
                        st.entries[idx].pins += 1;
                    }
                    if let Some(t0) = waited {
                        st.stats[layer].stall += t0.elapsed();
                    }
                    return Ok(Pinned {
                        pager: Some((self, idx)),
                        streamed,
                        weights,
                    });
                }
                Status::Failed if attempted => {
                    let reason = st.entries[idx].error.clone().unwrap_or_default();
                    return Err(PagerError::LoadFailed {
                        layer,
                        expert,
                        reason,
                    });
                }
                Status::Absent | Status::Failed if self.streams => {
                    // Not planned by `begin_layer` (or its load failed): stream it rather
                    // than take a stable expert's slot.
                    self.start_stream(&mut st, idx);
                    attempted = true;
                    continue;
                }
                Status::Absent | Status::Failed => {
                    let mut victims = Vec::new();
                    let room = self.make_room(&mut st, idx, Tier::Protected, &mut victims);
                    if room {
                        self.start_load(&mut st, idx, false);
                        attempted = true;
                    }
                    if room || !victims.is_empty() {
                        drop(st);
                        self.drop_victims(&victims)?;
                        st = self.shared.lock();
                        continue;
                    }
                }
                Status::Queued => {
                    promote(&mut st, idx);
                    attempted = true;
                }
                Status::Loading => attempted = true,
            }
            waited.get_or_insert_with(Instant::now);
            st = self.shared.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn release(&self, idx: usize) {
        let mut st = self.shared.lock();
        let e = &mut st.entries[idx];
        e.pins = e.pins.saturating_sub(1);
        e.protected = false;
    }

    /// Frees slots until `idx` can take one; false if nothing in `tier` can go now. Evicted
    /// experts whose pages must be dropped are added to `victims` (see [`Pager::evict`]).
    fn make_room(&self, st: &mut State, idx: usize, tier: Tier, victims: &mut Vec<usize>) -> bool {
        while st.resident >= self.slots {
            match self.pick_victim(st, idx, tier) {
                Some(v) => self.evict(st, v, victims),
                None => return false,
            }
        }
        true
    }

    fn pick_victim(&self, st: &State, idx: usize, tier: Tier) -> Option<usize> {
        let ok = |i: usize| {
            let e = &st.entries[i];
            i != idx
                && e.pins == 0
                && matches!(e.status, Status::Ready | Status::Queued)
                && (tier == Tier::Protected || !e.protected)
        };
        let lru_among = |pred: &dyn Fn(usize) -> bool| {
            (0..st.entries.len())
                .filter(|&i| ok(i) && pred(i))
                .min_by(|&a, &b| self.keep_order(st, a, b))
        };
        match self.cfg.policy {
            Policy::Lru => lru_among(&|_| true),
            Policy::LayerLru | Policy::LayerFreq => {
                let e = self.num_experts;
                let layer = idx / e;
                let own = st.per_layer[layer] >= self.quotas[layer].max(1);
                let from_own = || lru_among(&|i| i / e == layer);
                let from_over = || lru_among(&|i| st.per_layer[i / e] > self.quotas[i / e]);
                if self.streams {
                    from_over()
                        .or_else(from_own)
                        .or_else(|| lru_among(&|_| true))
                } else if own {
                    from_own()
                        .or_else(from_over)
                        .or_else(|| lru_among(&|_| true))
                } else {
                    from_over().or_else(|| lru_among(&|_| true))
                }
            }
        }
    }

    /// Which of two experts is the better one to evict (`Less`): unprotected before protected,
    /// then the policy's order (lower score for [`Policy::LayerFreq`], then older use).
    fn keep_order(&self, st: &State, a: usize, b: usize) -> std::cmp::Ordering {
        let (x, y) = (&st.entries[a], &st.entries[b]);
        let by_score = if self.cfg.policy == Policy::LayerFreq {
            x.score.total_cmp(&y.score)
        } else {
            std::cmp::Ordering::Equal
        };
        x.protected
            .cmp(&y.protected)
            .then(by_score)
            .then(x.last_use.cmp(&y.last_use))
    }

    /// In streaming mode: whether the missed expert `idx` gets a slot of its layer's share
    /// (a free one, or one taken from the layer's weakest unpinned, unprotected resident
    /// expert, which goes to `victims`) or is streamed instead. [`Policy::LayerFreq`] admits
    /// it only over an expert with a lower routing score; [`Policy::LayerLru`] always.
    fn admit(&self, st: &mut State, idx: usize, victims: &mut Vec<usize>) -> bool {
        let e = self.num_experts;
        let layer = idx / e;
        if self.quotas[layer] == 0 {
            return false;
        }
        if st.per_layer[layer] < self.quotas[layer] && st.resident < self.slots {
            return true;
        }
        let victim = (layer * e..(layer + 1) * e)
            .filter(|&i| {
                let x = &st.entries[i];
                i != idx
                    && x.pins == 0
                    && !x.protected
                    && matches!(x.status, Status::Ready | Status::Queued)
            })
            .min_by(|&a, &b| self.keep_order(st, a, b));
        match victim {
            Some(v)
                if self.cfg.policy != Policy::LayerFreq
                    || st.entries[idx].score > st.entries[v].score =>
            {
                self.evict(st, v, victims);
                true
            }
            _ => false,
        }
    }

    /// Queues `idx` to be streamed: read piece by piece on the I/O threads, each piece
    /// computed and dropped by the compute thread ([`Pinned::wait_block`],
    /// [`Pinned::release_block`]). It takes no slot: the I/O threads hold at most `slack`
    /// bytes of streamed pieces (see `take_piece`).
    fn start_stream(&self, st: &mut State, idx: usize) {
        let n = self.shared.blocks.last().map_or(0, |b| b.pieces.end);
        let e = &mut st.entries[idx];
        e.status = Status::Streaming;
        e.error = None;
        e.prefetched = false;
        e.pieces = vec![PieceState::Unstarted; n];
        st.demand_q.push_back(idx);
        self.shared.work.notify_all();
    }

    /// Waits until every piece of block `b` of the streamed expert `idx` is read.
    fn wait_block(&self, idx: usize, b: usize) -> Result<(), PagerError> {
        let pieces = self.shared.blocks[b].pieces.clone();
        let layer = idx / self.num_experts;
        let mut st = self.shared.lock();
        let mut waited: Option<Instant> = None;
        loop {
            let e = &st.entries[idx];
            if let Some(reason) = &e.error {
                return Err(PagerError::LoadFailed {
                    layer,
                    expert: idx % self.num_experts,
                    reason: reason.clone(),
                });
            }
            if e.pieces[pieces.clone()]
                .iter()
                .all(|&p| p == PieceState::Read)
            {
                if let Some(t0) = waited {
                    st.stats[layer].stall += t0.elapsed();
                }
                return Ok(());
            }
            waited.get_or_insert_with(Instant::now);
            st = self.shared.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Drops block `b` of the streamed expert `idx` from memory (its rows are computed) and
    /// lets the I/O threads read further.
    fn release_block(&self, idx: usize, b: usize) -> Result<(), PagerError> {
        let block = &self.shared.blocks[b];
        let mut result = Ok(());
        for &k in block.phase.tensors() {
            let span = block.span(k, self.shared.row_bytes);
            let part = span.start as usize..span.end as usize;
            if let Err(e) = self
                .checkpoint
                .drop_page_cache_part(&self.names[idx][k], part)
            {
                result = result.and(Err(PagerError::from(e)));
            }
        }
        let mut st = self.shared.lock();
        for (p, &k) in block.pieces.clone().zip(block.phase.tensors()) {
            if st.entries[idx].pieces[p] == PieceState::Read {
                st.entries[idx].pieces[p] = PieceState::Released;
                st.stream_held -= block.bytes(k, self.shared.row_bytes);
            }
        }
        drop(st);
        self.shared.work.notify_all();
        result
    }

    /// Ends a stream (normally after its last block, or early on an error): pieces not yet
    /// started are not read, reads in flight are waited for, whatever is still held is
    /// dropped, edge pages included when no resident expert shares them.
    fn finish_stream(&self, idx: usize) -> Result<(), PagerError> {
        let mut st = self.shared.lock();
        while let Some(pos) = st.active.iter().position(|l| l.idx == idx) {
            let load = &mut st.active[pos];
            load.outstanding -= load.pieces.len() - load.next;
            load.next = load.pieces.len();
            if load.outstanding == 0 {
                st.active.remove(pos);
                break;
            }
            st = self.shared.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        // Still queued (never started): it leaves the queue.
        st.demand_q.retain(|&i| i != idx);
        let mut held = 0;
        for block in &self.shared.blocks {
            for (p, &k) in block.pieces.clone().zip(block.phase.tensors()) {
                if matches!(
                    st.entries[idx].pieces[p],
                    PieceState::Reading | PieceState::Read
                ) {
                    held += block.bytes(k, self.shared.row_bytes);
                }
            }
        }
        drop(st);
        let result = self.drop_expert(idx, |_| {});
        let mut st = self.shared.lock();
        st.stream_held -= held;
        let e = &mut st.entries[idx];
        e.pieces.clear();
        e.status = if e.error.is_some() {
            Status::Failed
        } else {
            Status::Absent
        };
        drop(st);
        self.shared.work.notify_all();
        result
    }

    /// Takes `v`'s slot. A queued expert just leaves the queue; a ready one is marked
    /// `evicting` and added to `victims`, whose pages the caller drops with
    /// [`Pager::drop_victims`] once it has released the lock.
    fn evict(&self, st: &mut State, v: usize, victims: &mut Vec<usize>) {
        let layer = v / self.num_experts;
        let was = st.entries[v].status;
        if was == Status::Queued {
            st.demand_q.retain(|&i| i != v);
            st.prefetch_q.retain(|&i| i != v);
            st.unstarted_bytes -= self.shared.bytes[v];
        }
        let e = &mut st.entries[v];
        let wasted = e.prefetched;
        e.status = Status::Absent;
        e.prefetched = false;
        e.protected = false;
        st.resident -= 1;
        st.per_layer[layer] -= 1;
        if wasted {
            st.stats[layer].prefetch_wasted += 1;
        }
        if was == Status::Ready {
            st.entries[v].evicting = true;
            st.evicting_bytes += self.shared.bytes[v];
            victims.push(v);
        }
    }

    /// Drops the pages of evicted experts: from this process (`MADV_DONTNEED`) and, by
    /// default, from the page cache. Runs without the lock, so the I/O threads read the experts
    /// that replace them meanwhile; each victim's bytes are released from the overlap allowance
    /// (`evicting_bytes`) when its pages are gone, even if a syscall failed.
    fn drop_victims(&self, victims: &[usize]) -> Result<(), PagerError> {
        let mut result = Ok(());
        for &v in victims {
            let mut left = self.shared.bytes[v];
            let r = self.drop_expert(v, |k| {
                // Each tensor's bytes are released as soon as they are gone, so the I/O
                // threads wait for one tensor's drop (~20 ms for 117 MB), not a whole expert's.
                let freed = if k == 2 {
                    left
                } else {
                    self.tensor_bytes[v][k].min(left)
                };
                left -= freed;
                let mut st = self.shared.lock();
                st.evicting_bytes -= freed;
                if k == 2 {
                    st.entries[v].evicting = false;
                }
                drop(st);
                self.shared.work.notify_all();
            });
            result = result.and(r);
        }
        result
    }

    /// Drops expert `v`'s three tensors from this process and, by default, from the page
    /// cache, calling `dropped(k)` after tensor `k` (even if a syscall failed); the first
    /// error is returned. Its entry must no longer be resident.
    fn drop_expert(&self, v: usize, mut dropped: impl FnMut(usize)) -> Result<(), PagerError> {
        // An edge page goes too when every other expert sharing it is absent now. Decided at
        // drop time: an expert queued since the eviction may already have read the shared page.
        let gone: Vec<(bool, bool)> = {
            let st = self.shared.lock();
            let gone = |edge: &Option<Vec<usize>>| {
                edge.as_ref().is_some_and(|o| {
                    o.iter()
                        .all(|&x| matches!(st.entries[x].status, Status::Absent | Status::Failed))
                })
            };
            self.edges[v]
                .iter()
                .map(|e| (gone(&e.head), gone(&e.tail)))
                .collect()
        };
        let mut result = Ok(());
        for (k, (name, (head, tail))) in self.names[v].iter().zip(gone).enumerate() {
            let r = if self.cfg.drop_page_cache {
                self.checkpoint.drop_page_cache_edges(name, head, tail)
            } else {
                self.checkpoint.advise(name, Advice::DontNeed)
            };
            result = result.and(r.map_err(PagerError::from));
            dropped(k);
        }
        result
    }

    fn start_load(&self, st: &mut State, idx: usize, prefetch: bool) {
        let layer = idx / self.num_experts;
        let e = &mut st.entries[idx];
        e.status = Status::Queued;
        e.error = None;
        st.resident += 1;
        st.peak = st.peak.max(st.resident);
        st.per_layer[layer] += 1;
        st.unstarted_bytes += self.shared.bytes[idx];
        if prefetch {
            st.prefetch_q.push_back(idx);
        } else {
            st.demand_q.push_back(idx);
        }
        // Every idle I/O thread: an expert is several pieces, read at once.
        self.shared.work.notify_all();
    }
}

impl Drop for Pager<'_> {
    fn drop(&mut self) {
        stop(&self.shared, &mut self.io);
    }
}

/// Stops the I/O threads (each finishes the read it is in) and waits for them.
fn stop(shared: &Shared, io: &mut Vec<JoinHandle<()>>) {
    shared.lock().shutdown = true;
    shared.work.notify_all();
    for h in io.drain(..) {
        let _ = h.join();
    }
}

fn residency_of(e: &Entry) -> Residency {
    match e.status {
        Status::Ready => Residency::Ready,
        Status::Queued | Status::Loading | Status::Streaming => Residency::Loading,
        Status::Failed => Residency::Failed(e.error.clone().unwrap_or_default()),
        Status::Absent => Residency::NoRoom,
    }
}

/// Moves a queued prefetch to the demand queue (a demand now waits for it).
fn promote(st: &mut State, idx: usize) {
    if let Some(p) = st.prefetch_q.iter().position(|&i| i == idx) {
        st.prefetch_q.remove(p);
        st.demand_q.push_back(idx);
    }
}

/// One I/O thread: takes the next piece ([`take_piece`]), reads it without the lock, and
/// marks its expert ready when its last piece is in.
fn io_loop(
    shared: Arc<Shared>,
    sources: Arc<Vec<ExpertSource>>,
    files: Arc<Files>,
    chunk: usize,
    per_layer: usize,
) {
    let mut buf = vec![0u8; chunk];
    let mut st = shared.lock();
    loop {
        if st.shutdown {
            return;
        }
        let Some((idx, pi, piece)) =
            take_piece(&mut st, &shared, &sources, &files, chunk, per_layer)
        else {
            st = shared.work.wait(st).unwrap_or_else(|e| e.into_inner());
            continue;
        };
        drop(st);
        let result = files.read(piece, &mut buf);
        st = shared.lock();
        let Some(pos) = st.active.iter().position(|l| l.idx == idx) else {
            continue;
        };
        let load = &mut st.active[pos];
        load.outstanding -= 1;
        let stream = load.stream;
        if let Err(reason) = result {
            // The expert has failed: the pieces nobody started are not read.
            let skipped: u64 = load.pieces[load.next..].iter().map(|p| p.2 as u64).sum();
            load.outstanding -= load.pieces.len() - load.next;
            load.next = load.pieces.len();
            if stream {
                // Compute waiting on a block sees the error at once.
                st.entries[idx].error.get_or_insert(reason.clone());
            } else {
                st.unstarted_bytes -= skipped;
            }
            st.active[pos].error.get_or_insert(reason);
        } else if stream {
            st.entries[idx].pieces[pi] = PieceState::Read;
        }
        if stream {
            shared.done.notify_all();
        }
        if st.active[pos].outstanding == 0 {
            let load = st.active.remove(pos).expect("position found above");
            finish_load(&mut st, &shared, load, per_layer);
        }
    }
}

/// The next piece for an I/O thread (its expert, its index in the expert's plan, the read),
/// or `None` to wait: a piece of the oldest expert still being cut up, else the first piece
/// of the next queued expert (demand before prefetch).
///
/// Evicted experts' pages are dropped by the compute thread after it has queued their
/// replacements, so the disk need not wait for the drops; but those pages are still in
/// memory, as are streamed pieces until the compute thread has used and dropped them. A
/// piece is started only while those bytes (with the piece itself, if streamed) are covered
/// by the bytes of queued experts not yet started plus `slack`: the page cache then holds at
/// most the budget plus `slack` (the read buffers' size) of expert bytes.
fn take_piece(
    st: &mut State,
    shared: &Shared,
    sources: &[ExpertSource],
    files: &Files,
    chunk: usize,
    per_layer: usize,
) -> Option<(usize, usize, Piece)> {
    loop {
        let allowed = |st: &State, len: u64, stream: bool| {
            let (held, unstarted) = if stream { (len, 0) } else { (0, len) };
            st.evicting_bytes + st.stream_held + held
                <= st.unstarted_bytes - unstarted + shared.slack
        };
        if let Some(pos) = st.active.iter().position(|l| l.next < l.pieces.len()) {
            let load = &st.active[pos];
            let (pi, piece, stream) = (load.next, load.pieces[load.next], load.stream);
            let len = piece.2 as u64;
            if !allowed(st, len, stream) {
                return None;
            }
            let load = &mut st.active[pos];
            load.next += 1;
            let idx = load.idx;
            if stream {
                st.stream_held += len;
                st.entries[idx].pieces[pi] = PieceState::Reading;
            } else {
                st.unstarted_bytes -= len;
            }
            return Some((idx, pi, piece));
        }
        // An expert whose old pages are still being dropped waits for the drop to finish. A
        // stream is never overtaken: the compute thread uses streams in queue order, so a
        // later one holding the read window would wait for an earlier one that cannot start.
        let ready = |q: &VecDeque<usize>| {
            for (p, &i) in q.iter().enumerate() {
                let e = &st.entries[i];
                if !e.evicting {
                    return Some(p);
                }
                if e.status == Status::Streaming {
                    return None;
                }
            }
            None
        };
        let idx = if let Some(p) = ready(&st.demand_q) {
            st.demand_q.remove(p)?
        } else if let Some(p) = ready(&st.prefetch_q) {
            st.prefetch_q.remove(p)?
        } else {
            return None;
        };
        let stream = st.entries[idx].status == Status::Streaming;
        let planned = if stream {
            files.plan_stream(&sources[idx], &shared.blocks, shared.row_bytes)
        } else {
            st.entries[idx].status = Status::Loading;
            files.plan(&sources[idx], chunk)
        };
        match planned {
            Ok(pieces) if !pieces.is_empty() => {
                let outstanding = pieces.len();
                st.active.push_back(Load {
                    idx,
                    pieces,
                    next: 0,
                    outstanding,
                    error: None,
                    stream,
                });
            }
            planned => {
                // Nothing to read (an empty expert) or nothing readable: done at once.
                if !stream {
                    st.unstarted_bytes -= shared.bytes[idx];
                }
                let error = match planned {
                    Err(e) => Some(e),
                    Ok(_) if stream => Some("the expert has no bytes to stream".to_string()),
                    Ok(_) => None,
                };
                if stream {
                    st.entries[idx].error.clone_from(&error);
                }
                let load = Load {
                    idx,
                    pieces: Vec::new(),
                    next: 0,
                    outstanding: 0,
                    error,
                    stream,
                };
                finish_load(st, shared, load, per_layer);
            }
        }
    }
}

/// An expert's last piece is in: ready, or failed with the first error.
fn finish_load(st: &mut State, shared: &Shared, load: Load, per_layer: usize) {
    let idx = load.idx;
    let layer = idx / per_layer;
    if load.stream {
        // A streamed expert is ended by the compute thread (`Pager::finish_stream`).
        if load.error.is_none() {
            st.stats[layer].bytes_read += shared.bytes[idx];
        }
        shared.done.notify_all();
        return;
    }
    match load.error {
        None => {
            st.entries[idx].status = Status::Ready;
            st.stats[layer].bytes_read += shared.bytes[idx];
        }
        Some(reason) => {
            let e = &mut st.entries[idx];
            e.status = Status::Failed;
            e.error = Some(reason);
            e.prefetched = false;
            st.resident -= 1;
            st.per_layer[layer] -= 1;
        }
    }
    shared.done.notify_all();
}

/// An expert's weights, pinned for compute when a pager is attached; unpinned on drop.
///
/// A streamed expert (no slot: [`Pinned::blocks`] is `Some`) must be computed block by block:
/// for each block, [`Pinned::wait_block`], compute its rows, [`Pinned::release_block`].
/// Dropping it ends the stream (what was not used is not read, or is dropped).
pub struct Pinned<'p, 'w> {
    pager: Option<(&'p Pager<'w>, usize)>,
    streamed: bool,
    weights: ExpertWeights<'w>,
}

impl<'w> Pinned<'_, 'w> {
    /// Weights read without a pager (nothing to pin).
    pub(crate) fn unpaged(weights: ExpertWeights<'w>) -> Self {
        Pinned {
            pager: None,
            streamed: false,
            weights,
        }
    }

    /// For a streamed expert, the blocks to compute it in, in order; `None` when its weights
    /// are resident whole.
    pub fn blocks(&self) -> Option<&[Block]> {
        match self.pager {
            Some((p, _)) if self.streamed => Some(&p.shared.blocks),
            _ => None,
        }
    }

    /// Waits until block `b`'s rows are in memory (a streamed expert).
    pub fn wait_block(&self, b: usize) -> Result<(), PagerError> {
        match self.pager {
            Some((p, idx)) if self.streamed => p.wait_block(idx, b),
            _ => Ok(()),
        }
    }

    /// Block `b`'s rows are computed: drop them from memory (a streamed expert).
    pub fn release_block(&self, b: usize) -> Result<(), PagerError> {
        match self.pager {
            Some((p, idx)) if self.streamed => p.release_block(idx, b),
            _ => Ok(()),
        }
    }
}

impl<'w> std::ops::Deref for Pinned<'_, 'w> {
    type Target = ExpertWeights<'w>;
    fn deref(&self) -> &ExpertWeights<'w> {
        &self.weights
    }
}

impl Drop for Pinned<'_, '_> {
    fn drop(&mut self) {
        match self.pager {
            // A failed drop leaves pages cached that the next eviction or stream of a
            // neighbour drops; compute has its results already.
            Some((pager, idx)) if self.streamed => {
                let _ = pager.finish_stream(idx);
            }
            Some((pager, idx)) => pager.release(idx),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(predicted: u64, correct: u64) -> LayerStats {
        LayerStats {
            predicted,
            predicted_correct: correct,
            ..LayerStats::default()
        }
    }

    #[test]
    fn prefetch_gate_waits_for_a_track_record_then_follows_accuracy() {
        // No guesses scored yet, or too few even if all right: closed.
        assert!(!prefetch_gate_open(&scored(0, 0)));
        assert!(!prefetch_gate_open(&scored(
            PREFETCH_TRIAL - 1,
            PREFETCH_TRIAL - 1
        )));
        // Trained routers (shakespeare-moe, ~93%): open after the trial.
        assert!(prefetch_gate_open(&scored(PREFETCH_TRIAL, PREFETCH_TRIAL)));
        assert!(prefetch_gate_open(&scored(100, 93)));
        // Random routers (forged Mixtral, ~25–36%): never open.
        assert!(!prefetch_gate_open(&scored(PREFETCH_TRIAL, 2)));
        assert!(!prefetch_gate_open(&scored(100, 36)));
        assert!(!prefetch_gate_open(&scored(PREFETCH_TRIAL, 5)));
        assert!(!prefetch_gate_open(&scored(100, 79)));
        assert!(prefetch_gate_open(&scored(100, 80)));
    }
}
