//! A persistent worker pool for the hot loops.
//!
//! Batch-1 decode issues hundreds of small parallel ops per token (every matvec, every expert), so
//! spawning threads or allocating per op would cost more than the op itself. The pool creates its
//! threads once; an op publishes a borrowed closure under a new generation, and every thread,
//! the caller included, claims the op's shares (`f(share, n_shares)`) from one atomic word until
//! none is left. The caller then waits only for shares already running: a worker the OS has not
//! scheduled yet (shared, oversubscribed machines) never delays an op, the caller simply runs
//! its share too. Idle workers spin briefly (ops arrive back-to-back during decode) and then park
//! on a condvar so an idle engine costs no CPU.

use std::cell::{Cell, UnsafeCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker (or a caller waiting for workers) spins before parking / yielding.
const SPIN_FOR: Duration = Duration::from_micros(300);

thread_local! {
    /// Set while a thread executes a pool job, so a nested `run` executes inline instead of
    /// deadlocking on the pool's run lock.
    static IN_POOL_JOB: Cell<bool> = const { Cell::new(false) };
}

/// The job closure as seen by workers: a type- and lifetime-erased pointer. It is only
/// dereferenced by a thread that claimed a share of the job's generation, and `Pool::run` keeps
/// the closure borrowed until every share is claimed and no share is running.
type JobPtr = *const (dyn Fn(usize, usize) + Sync);

/// `state` word layout: generation (high 32 bits) | shares claimed (16) | shares running (16).
const CLAIM_ONE: u64 = 1 << 16;
const FIELD: u64 = 0xFFFF;

fn gen_of(s: u64) -> u64 {
    s >> 32
}
fn claimed_of(s: u64) -> u64 {
    (s >> 16) & FIELD
}
fn running_of(s: u64) -> u64 {
    s & FIELD
}

/// Most threads a pool will use (the share counters are 16 bits wide).
const MAX_THREADS: usize = 1024;

struct Shared {
    job: UnsafeCell<Option<JobPtr>>,
    state: AtomicU64,
    sleepers: AtomicUsize,
    sleep_lock: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
    panicked: AtomicBool,
    /// Threads per job, caller included; fixed before the first job is published.
    n_threads: AtomicUsize,
}

// SAFETY: `job` is written only by the thread holding `Pool::run_lock` while no share of the
// previous job is unclaimed or running, and read only by a thread that claimed a share of the
// current generation with an Acquire CAS on `state`, which happens-after the write (the new
// generation is published by a SeqCst store after writing `job`).
unsafe impl Sync for Shared {}
// SAFETY: the raw job pointer is only a borrowed `Sync` closure; see the Sync argument above.
unsafe impl Send for Shared {}

/// Persistent worker pool. `Send + Sync`; concurrent `run` calls from different threads are
/// serialised.
pub struct Pool {
    shared: Option<Arc<Shared>>,
    handles: Vec<JoinHandle<()>>,
    n_threads: usize,
    run_lock: Mutex<()>,
}

impl Pool {
    /// A pool with `threads` threads in total (the calling thread counts as one, so
    /// `threads - 1` workers are spawned). `0` means [`Pool::physical_cores`].
    pub fn new(threads: usize) -> Pool {
        let n = if threads == 0 {
            Self::physical_cores()
        } else {
            threads
        }
        .min(MAX_THREADS);
        if n <= 1 {
            return Pool::single();
        }
        let shared = Arc::new(Shared {
            job: UnsafeCell::new(None),
            state: AtomicU64::new(0),
            sleepers: AtomicUsize::new(0),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            n_threads: AtomicUsize::new(n),
        });
        let mut handles = Vec::with_capacity(n - 1);
        for idx in 1..n {
            let s = Arc::clone(&shared);
            let h = std::thread::Builder::new()
                .name(format!("swarmlm-kern-{idx}"))
                .spawn(move || worker_loop(&s));
            match h {
                Ok(h) => handles.push(h),
                // Could not spawn (resource limits): run with the workers we have.
                Err(_) => break,
            }
        }
        let n_threads = handles.len() + 1;
        if n_threads == 1 {
            return Pool::single();
        }
        // Fewer workers may have started than planned; jobs must see the real count.
        shared.n_threads.store(n_threads, Ordering::SeqCst);
        Pool {
            shared: Some(shared),
            handles,
            n_threads,
            run_lock: Mutex::new(()),
        }
    }

    /// A pool that runs every job inline on the calling thread.
    pub fn single() -> Pool {
        Pool {
            shared: None,
            handles: Vec::new(),
            n_threads: 1,
            run_lock: Mutex::new(()),
        }
    }

    /// Number of threads a job is split over (including the caller).
    pub fn threads(&self) -> usize {
        self.n_threads
    }

    /// Physical cores usable by this process: distinct `thread_siblings_list` entries of the
    /// CPUs in sysfs, capped by `available_parallelism` (which honours affinity and cgroups).
    /// SMT siblings share the core's load ports, so they add nothing to a bandwidth-bound loop.
    pub fn physical_cores() -> usize {
        let avail = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        match sysfs_physical_cores() {
            Some(p) if p > 0 => p.min(avail),
            _ => avail,
        }
    }

    /// Runs `f(share, n_shares)` once for every share `0..n_shares` (`n_shares` =
    /// [`Pool::threads`]) and returns when all have finished. Shares run concurrently on the
    /// pool's threads; which thread runs which share is not fixed (a thread may run several if
    /// another is slow to start), but each share runs exactly once. A panic in any share is
    /// re-raised here after all shares have stopped. Called from inside a job, it runs `f(0, 1)`
    /// inline.
    pub fn run<F: Fn(usize, usize) + Sync>(&self, f: F) {
        let shared = match &self.shared {
            Some(s) if !IN_POOL_JOB.with(|c| c.get()) => s,
            _ => {
                f(0, 1);
                return;
            }
        };
        let guard = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        let n = self.n_threads;
        let job: &(dyn Fn(usize, usize) + Sync) = &f;
        // SAFETY: erasing the lifetime is sound because this function does not return before
        // every share is claimed and none is running (the wait below), after which no thread
        // can reach the pointer, and the pointer is cleared before `f` goes out of scope.
        let job: JobPtr = unsafe {
            std::mem::transmute::<
                &(dyn Fn(usize, usize) + Sync),
                &'static (dyn Fn(usize, usize) + Sync),
            >(job)
        };
        // SAFETY: we hold `run_lock` and the previous job fully retired (all shares claimed, none
        // running), so no thread reads `job` concurrently.
        unsafe { *shared.job.get() = Some(job) };
        let g = (gen_of(shared.state.load(Ordering::Relaxed)) + 1) & 0xFFFF_FFFF;
        shared.state.store(g << 32, Ordering::SeqCst);
        if shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _l = shared.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.wake.notify_all();
        }

        IN_POOL_JOB.with(|c| c.set(true));
        let mut mine = Ok(());
        while let Some(i) = claim(&shared.state, g, n) {
            let r = catch_unwind(AssertUnwindSafe(|| f(i, n)));
            shared.state.fetch_sub(1, Ordering::Release);
            if r.is_err() && mine.is_ok() {
                mine = r;
            }
        }
        IN_POOL_JOB.with(|c| c.set(false));

        // Every share is claimed; wait for the ones still running on workers.
        let start = Instant::now();
        let mut spins = 0u32;
        while running_of(shared.state.load(Ordering::Acquire)) != 0 {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) && start.elapsed() > SPIN_FOR {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        // SAFETY: all shares are claimed and none is running (Acquire above), so no thread
        // dereferences the pointer any more and none can claim a share of this generation.
        unsafe { *shared.job.get() = None };
        let worker_panicked = shared.panicked.swap(false, Ordering::Relaxed);
        drop(guard);
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if worker_panicked {
            panic!("a swarmlm-kernels pool worker panicked while running a job");
        }
    }
}

impl Pool {
    /// Runs `f(range)` over `0..total` in chunks of `chunk` (the last may be shorter), claimed
    /// dynamically by the pool's threads from a shared counter. On a shared machine a thread can
    /// be descheduled mid-op; dynamic claiming lets the others finish its share instead of
    /// waiting for it. `f` must not care which thread runs a chunk (rows are independent).
    /// A single-thread pool (or a single chunk) runs `f(0..total)` once.
    pub fn run_chunks<F: Fn(std::ops::Range<usize>) + Sync>(
        &self,
        total: usize,
        chunk: usize,
        f: F,
    ) {
        let chunk = chunk.max(1);
        let n_chunks = total.div_ceil(chunk);
        if n_chunks <= 1 || self.n_threads == 1 {
            if total > 0 {
                f(0..total);
            }
            return;
        }
        let next = AtomicUsize::new(0);
        self.run(|_, _| loop {
            let c = next.fetch_add(1, Ordering::Relaxed);
            if c >= n_chunks {
                break;
            }
            let lo = c * chunk;
            f(lo..(lo + chunk).min(total));
        });
    }
}

impl Pool {
    /// Like [`Pool::run_chunks`], but chunk sizes shrink as the work runs out (guided
    /// scheduling): each claim takes `remaining / (2 · threads)` items, clamped to
    /// `align..=max_chunk` and rounded up to a multiple of `align` (except the last). Big chunks
    /// keep claiming cheap and read streams long; small final chunks let all threads finish
    /// together, which matters for short ops such as a 1024 × 4096 projection.
    pub fn run_chunks_guided<F: Fn(std::ops::Range<usize>) + Sync>(
        &self,
        total: usize,
        max_chunk: usize,
        align: usize,
        f: F,
    ) {
        let align = align.max(1);
        let max_chunk = max_chunk.max(align);
        if total == 0 {
            return;
        }
        if self.n_threads == 1 || total <= align {
            f(0..total);
            return;
        }
        let next = AtomicUsize::new(0);
        self.run(|_, n| {
            let mut cur = next.load(Ordering::Relaxed);
            loop {
                if cur >= total {
                    break;
                }
                let rem = total - cur;
                let want = (rem / (2 * n)).clamp(align, max_chunk).div_ceil(align) * align;
                let end = (cur + want).min(total);
                match next.compare_exchange_weak(cur, end, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => {
                        f(cur..end);
                        cur = next.load(Ordering::Relaxed);
                    }
                    Err(now) => cur = now,
                }
            }
        });
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.shutdown.store(true, Ordering::SeqCst);
            // A new generation with nothing left to claim: wakes workers, runs nothing.
            let g = (gen_of(shared.state.load(Ordering::Relaxed)) + 1) & 0xFFFF_FFFF;
            shared
                .state
                .store((g << 32) | (FIELD << 16), Ordering::SeqCst);
            {
                let _l = shared.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
                shared.wake.notify_all();
            }
            for h in self.handles.drain(..) {
                let _ = h.join();
            }
        }
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.n_threads)
            .finish()
    }
}

/// Claims the next unclaimed share of generation `g` (and counts it as running), if any.
fn claim(state: &AtomicU64, g: u64, n: usize) -> Option<usize> {
    let mut cur = state.load(Ordering::Acquire);
    loop {
        if gen_of(cur) != g || claimed_of(cur) >= n as u64 {
            return None;
        }
        match state.compare_exchange_weak(
            cur,
            cur + CLAIM_ONE + 1,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return Some(claimed_of(cur) as usize),
            Err(now) => cur = now,
        }
    }
}

fn worker_loop(s: &Shared) {
    IN_POOL_JOB.with(|c| c.set(true));
    let mut seen = 0u64;
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        let mut g = gen_of(s.state.load(Ordering::Acquire));
        while g == seen {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) && start.elapsed() > SPIN_FOR {
                let mut l = s.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                loop {
                    g = gen_of(s.state.load(Ordering::SeqCst));
                    if g != seen {
                        break;
                    }
                    l = s.wake.wait(l).unwrap_or_else(|e| e.into_inner());
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
                break;
            }
            std::hint::spin_loop();
            g = gen_of(s.state.load(Ordering::Acquire));
        }
        seen = g;
        if s.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let n = s.n_threads.load(Ordering::Relaxed);
        while let Some(i) = claim(&s.state, g, n) {
            // SAFETY: we hold a claimed, running share of generation `g`, so the caller of
            // `Pool::run` keeps the closure alive and `job` holds it (written before the
            // generation was published; our Acquire CAS synchronises with that store).
            let job = unsafe { *s.job.get() };
            if let Some(job) = job {
                // SAFETY: as above; the pointer refers to a live `Sync` closure.
                let f = unsafe { &*job };
                if catch_unwind(AssertUnwindSafe(|| f(i, n))).is_err() {
                    s.panicked.store(true, Ordering::Relaxed);
                }
            }
            s.state.fetch_sub(1, Ordering::Release);
        }
    }
}

fn sysfs_physical_cores() -> Option<usize> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu").ok()?;
    let mut cores = std::collections::BTreeSet::new();
    for e in dir.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let Some(num) = name.strip_prefix("cpu") else {
            continue;
        };
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // Offline CPUs have no topology directory; skip them.
        let p = e.path().join("topology/thread_siblings_list");
        if let Ok(s) = std::fs::read_to_string(p) {
            cores.insert(s.trim().to_string());
        }
    }
    if cores.is_empty() {
        None
    } else {
        Some(cores.len())
    }
}

/// The `idx`-th of `parts` contiguous sub-ranges of `0..total`, with boundaries on multiples of
/// `align` (so threads never write to the same cache line of the output).
pub fn split_range(total: usize, parts: usize, idx: usize, align: usize) -> std::ops::Range<usize> {
    let parts = parts.max(1);
    let align = align.max(1);
    let chunk = total.div_ceil(parts).div_ceil(align) * align;
    let lo = (chunk * idx).min(total);
    let hi = (chunk * (idx + 1)).min(total);
    lo..hi
}

/// A raw pointer to a mutable output slice that pool jobs write disjoint parts of.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: jobs only create non-overlapping sub-slices (disjoint ranges per thread), so sharing
// the pointer across threads never produces aliasing `&mut`.
unsafe impl<T: Send> Send for SharedMut<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    pub(crate) fn new(s: &mut [T]) -> Self {
        SharedMut {
            ptr: s.as_mut_ptr(),
            len: s.len(),
        }
    }

    /// # Safety
    /// Callers on different threads must request disjoint ranges, and the original slice must
    /// outlive the returned one.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, r: std::ops::Range<usize>) -> &mut [T] {
        assert!(
            r.start <= r.end && r.end <= self.len,
            "SharedMut range out of bounds"
        );
        // SAFETY: in bounds (checked above); disjointness is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r.start), r.end - r.start) }
    }
}

impl<T: Copy + std::ops::AddAssign> SharedMut<T> {
    /// # Safety
    /// No other thread may access element `i` concurrently; the original slice must be alive.
    pub(crate) unsafe fn set(&self, i: usize, v: T) {
        assert!(i < self.len, "SharedMut index out of bounds");
        // SAFETY: in bounds; exclusivity is the caller's contract.
        unsafe { *self.ptr.add(i) = v }
    }

    /// # Safety
    /// As for [`SharedMut::set`].
    pub(crate) unsafe fn add(&self, i: usize, v: T) {
        assert!(i < self.len, "SharedMut index out of bounds");
        // SAFETY: in bounds; exclusivity is the caller's contract.
        unsafe { *self.ptr.add(i) += v }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_share_runs_once_even_if_a_worker_is_slow() {
        // Share 1 sleeps; the others must still all run exactly once, and run() must wait for
        // the sleeping share before returning.
        let pool = Pool::new(3);
        for _ in 0..20 {
            let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            pool.run(|i, n| {
                assert_eq!(n, 3);
                if i == 1 {
                    std::thread::sleep(Duration::from_millis(2));
                }
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn every_thread_runs_once_per_job() {
        for t in 1..=3 {
            let pool = Pool::new(t);
            assert_eq!(pool.threads(), t);
            for _ in 0..200 {
                let hits: Vec<AtomicUsize> = (0..t).map(|_| AtomicUsize::new(0)).collect();
                pool.run(|i, n| {
                    assert_eq!(n, t);
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn run_chunks_covers_every_index_once() {
        for t in 1..=3 {
            let pool = Pool::new(t);
            for (total, chunk) in [(0usize, 16usize), (1, 16), (100, 16), (1000, 7), (64, 64)] {
                let hits: Vec<AtomicUsize> = (0..total).map(|_| AtomicUsize::new(0)).collect();
                pool.run_chunks(total, chunk, |r| {
                    assert!(!r.is_empty());
                    assert!(t == 1 || r.len() <= chunk);
                    for i in r {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    }
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn run_chunks_guided_covers_every_index_once_with_aligned_starts() {
        for t in 1..=3 {
            let pool = Pool::new(t);
            for (total, max, align) in [
                (0usize, 64usize, 16usize),
                (5, 64, 16),
                (1000, 64, 16),
                (14336, 256, 16),
                (77, 8, 1),
            ] {
                let hits: Vec<AtomicUsize> = (0..total).map(|_| AtomicUsize::new(0)).collect();
                pool.run_chunks_guided(total, max, align, |r| {
                    assert!(!r.is_empty());
                    if t > 1 {
                        assert!(r.len() <= max.max(align));
                        assert!(r.start.is_multiple_of(align));
                    }
                    for i in r {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    }
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn parks_and_wakes_after_idle() {
        let pool = Pool::new(2);
        let c = AtomicUsize::new(0);
        pool.run(|_, _| {
            c.fetch_add(1, Ordering::Relaxed);
        });
        std::thread::sleep(Duration::from_millis(20));
        pool.run(|_, _| {
            c.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(c.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn nested_run_is_inline() {
        let pool = Pool::new(2);
        let c = AtomicUsize::new(0);
        pool.run(|_, _| {
            pool.run(|i, n| {
                assert_eq!((i, n), (0, 1));
                c.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(c.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn worker_panic_propagates_and_pool_survives() {
        let pool = Pool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(|i, _| {
                if i == 1 {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        let c = AtomicUsize::new(0);
        pool.run(|_, _| {
            c.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(c.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn concurrent_callers_are_serialised() {
        let pool = Arc::new(Pool::new(2));
        let total = Arc::new(AtomicUsize::new(0));
        let hs: Vec<_> = (0..3)
            .map(|_| {
                let p = Arc::clone(&pool);
                let t = Arc::clone(&total);
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        p.run(|_, _| {
                            t.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(total.load(Ordering::Relaxed), 600);
    }

    #[test]
    fn split_range_covers_without_overlap() {
        for total in [0usize, 1, 15, 16, 17, 100, 14336] {
            for parts in 1..=5 {
                let mut next = 0;
                for i in 0..parts {
                    let r = split_range(total, parts, i, 16);
                    assert_eq!(r.start, next.min(total));
                    assert!(r.start.is_multiple_of(16) || r.start == total);
                    next = r.end;
                }
                assert_eq!(next, total);
            }
        }
    }

    #[test]
    fn physical_cores_is_positive() {
        assert!(Pool::physical_cores() >= 1);
    }
}
