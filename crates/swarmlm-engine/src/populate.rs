//! Maps weight pages into the process before the kernels first stream them.
//!
//! With the checkpoint in the page cache, the first read of a mapped tensor still takes one page
//! fault per fault-around window (64 KiB): ~28k faults for the 1.8 GB one Mixtral-8x7B token
//! reads, paid in the first token and again mid-decode whenever an expert is used for the first
//! time. `MADV_POPULATE_READ` (Linux 5.14) fills the page tables of a whole range in one call,
//! without a trap per window, and the pool's threads each take a part of it. It is only an
//! optimisation: where the kernel does not know the advice the pages are simply faulted in by
//! the kernels as before.

use std::sync::atomic::{AtomicBool, Ordering};

use swarmlm_kernels::Pool;

/// Parts are multiples of 2 MiB so two threads never fill the same page-table page (each is
/// guarded by its own lock).
const PART_ALIGN: usize = 2 << 20;

/// Below this a range is populated by the calling thread alone.
const PAR_MIN_BYTES: usize = 8 << 20;

/// Once-per-item flags: which tensors (or experts) have had their pages populated.
#[derive(Debug, Default)]
pub(crate) struct FirstUse {
    done: Vec<AtomicBool>,
}

impl FirstUse {
    pub(crate) fn new(n: usize) -> FirstUse {
        FirstUse {
            done: (0..n).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// True exactly once per index (the first call); out-of-range indices are never "first".
    #[inline]
    pub(crate) fn take(&self, i: usize) -> bool {
        self.done
            .get(i)
            .is_some_and(|d| !d.load(Ordering::Relaxed) && !d.swap(true, Ordering::Relaxed))
    }
}

/// Populates the page tables for every page overlapping `data`, split over the pool.
pub(crate) fn populate<T>(pool: &Pool, data: &[T]) {
    let bytes = std::mem::size_of_val(data);
    if bytes == 0 {
        return;
    }
    let page = swarmlm_weights::page_size();
    let start = data.as_ptr() as usize / page * page;
    let end = (data.as_ptr() as usize + bytes).div_ceil(page) * page;
    if end - start < PAR_MIN_BYTES || pool.threads() == 1 {
        advise_populate(start, end);
        return;
    }
    pool.run(|i, n| {
        let r = swarmlm_kernels::split_range(end - start, n, i, PART_ALIGN);
        if !r.is_empty() {
            advise_populate(start + r.start, start + r.end);
        }
    });
}

#[cfg(target_os = "linux")]
fn advise_populate(start: usize, end: usize) {
    // SAFETY: [start, end) is page-aligned and every page in it overlaps the live slice the
    // caller passed (rounded outward to pages), so each page is mapped for at least as long as
    // this call. MADV_POPULATE_READ only faults pages in for reading; it never changes memory
    // contents. A failure (an older kernel: EINVAL) leaves the pages to be faulted on access.
    let _ = unsafe {
        libc::madvise(
            start as *mut libc::c_void,
            end - start,
            libc::MADV_POPULATE_READ,
        )
    };
}

#[cfg(not(target_os = "linux"))]
fn advise_populate(_start: usize, _end: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_use_is_true_once_per_index() {
        let f = FirstUse::new(3);
        assert!(f.take(1));
        assert!(!f.take(1));
        assert!(f.take(0));
        assert!(f.take(2));
        assert!(!f.take(3), "out of range is never first");
    }

    #[test]
    fn populate_leaves_data_unchanged() {
        let pool = Pool::new(2);
        // Large enough to be split over the pool, with an unaligned start.
        let v: Vec<u16> = (0..(9 << 20)).map(|i| (i * 7) as u16).collect();
        let s = &v[3..];
        populate(&pool, s);
        populate(&pool, &v[..0]);
        populate(&pool, &v[5..6]);
        assert!(s
            .iter()
            .enumerate()
            .all(|(i, &x)| x == ((i + 3) * 7) as u16));
    }
}
