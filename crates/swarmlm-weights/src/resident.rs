//! Per-tensor page-cache control for the expert pager: `madvise`, `mincore`, `posix_fadvise`.
//!
//! Tensors do not start or end on page boundaries, so each call must decide what to do with the
//! pages a tensor shares with its neighbours:
//!
//! - advice that *brings pages in* or only tunes readahead (`WillNeed`, `Random`, `Sequential`)
//!   rounds the range **outward** — fetching one neighbour page too many costs little, missing
//!   the tensor's first or last page would cost a fault;
//! - advice that *lets pages go* (`DontNeed`, and the page-cache eviction of
//!   [`Checkpoint::drop_page_cache`]) rounds **inward**, so evicting one expert never evicts
//!   the first or last page of the tensor next to it, which may be hot. A tensor smaller than
//!   a page may therefore not be dropped at all;
//! - [`Checkpoint::resident_bytes`] counts the pages the tensor touches (outward) and reports
//!   `pages × page size`, so a fully resident tensor reports its length rounded out to pages.
//!
//! `MADV_DONTNEED` on a read-only shared file mapping only unmaps the pages from this process (they are
//! re-read from the page cache or disk on the next touch, never zeroed); `mincore` on a file
//! mapping reports *page-cache* residency, so after `DontNeed` alone the pages usually still
//! count as resident. [`Checkpoint::drop_page_cache`] therefore unmaps first and then asks the
//! kernel (`POSIX_FADV_DONTNEED`) to evict the file range. Eviction is best effort: the kernel
//! keeps pages that other processes map or that are dirty, and it caches files in folios (up to
//! 2 MiB on current kernels) that it evicts only whole, so a folio straddling the tensor's ends
//! stays cached. For multi-MiB expert tensors that is a small fraction; for small tensors the
//! call may evict nothing.
//!
//! The inward rounding leaves each evicted tensor's first and last page mapped and cached
//! (once touched, forever): about 2 pages per tensor ever used, which a budget of whole experts
//! does not see (measured on shakespeare-moe: ~0.65 MB after 100 tokens at the smallest budget).
//! A caller that knows the neighbours sharing those pages are not needed either — the expert
//! pager knows which experts are resident — uses [`Checkpoint::drop_page_cache_edges`] to evict
//! them too.

use crate::{Advice, Checkpoint, WeightsError};

/// The system's page size: the unit every `madvise` and page-cache range of a mapping is
/// rounded to (4096 if `sysconf` cannot tell).
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// A tensor's address range in its map, plus what the syscalls need.
struct Span {
    base: usize,
    start: usize,
    end: usize,
    fd: i32,
}

impl Span {
    fn outward(&self, page: usize) -> (usize, usize) {
        let s = (self.base + self.start) / page * page;
        let e = (self.base + self.end).div_ceil(page) * page;
        (s, e)
    }

    fn inward(&self, page: usize) -> (usize, usize) {
        let s = (self.base + self.start).div_ceil(page) * page;
        let e = (self.base + self.end) / page * page;
        (s, e.max(s))
    }
}

impl Checkpoint {
    fn span(&self, hf_name: &str) -> Result<Option<Span>, WeightsError> {
        let (_, e) = self.entry(hf_name)?;
        if e.start == e.end {
            return Ok(None);
        }
        let f = &self.files[e.file];
        Ok(Some(Span {
            base: f.bytes().as_ptr() as usize,
            start: e.start as usize,
            end: e.end as usize,
            fd: f.raw_fd(),
        }))
    }

    /// `madvise` on the pages of one tensor (outward-rounded for `WillNeed`, `Random` and
    /// `Sequential`; inward-rounded for `DontNeed` so neighbouring tensors keep their pages).
    pub fn advise(&self, hf_name: &str, advice: Advice) -> Result<(), WeightsError> {
        let Some(span) = self.span(hf_name)? else {
            return Ok(());
        };
        let page = page_size();
        let ((s, e), flag) = match advice {
            Advice::WillNeed => (span.outward(page), libc::MADV_WILLNEED),
            Advice::Random => (span.outward(page), libc::MADV_RANDOM),
            Advice::Sequential => (span.outward(page), libc::MADV_SEQUENTIAL),
            Advice::DontNeed => (span.inward(page), libc::MADV_DONTNEED),
        };
        if s == e {
            return Ok(());
        }
        // SAFETY: [s, e) is page-aligned and lies within the pages of a live read-only map
        // (the map spans whole pages, so rounding the tensor outward stays inside it). None of
        // these advices can change memory contents of a read-only file mapping: DONTNEED only
        // drops the process's page-table entries, and the next access re-reads the file.
        let rc = unsafe { libc::madvise(s as *mut libc::c_void, e - s, flag) };
        if rc != 0 {
            return Err(WeightsError::Syscall {
                tensor: hf_name.to_string(),
                op: "madvise",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Bytes of the tensor's pages that are in the page cache: resident pages (of those the
    /// tensor touches, rounded outward) × page size.
    pub fn resident_bytes(&self, hf_name: &str) -> Result<usize, WeightsError> {
        let Some(span) = self.span(hf_name)? else {
            return Ok(0);
        };
        let page = page_size();
        let (s, e) = span.outward(page);
        let pages = (e - s) / page;
        let mut vec = vec![0u8; pages];
        // SAFETY: [s, e) is page-aligned and within a live map; `vec` has one byte per page
        // as mincore requires.
        let rc = unsafe { libc::mincore(s as *mut libc::c_void, e - s, vec.as_mut_ptr()) };
        if rc != 0 {
            return Err(WeightsError::Syscall {
                tensor: hf_name.to_string(),
                op: "mincore",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(vec.iter().filter(|&&b| b & 1 != 0).count() * page)
    }

    /// Asks the kernel to evict the tensor's whole pages from the page cache: unmaps every page
    /// it touches from this process (`MADV_DONTNEED`, outward: unmapping a page a neighbour
    /// shares costs that neighbour at most a minor fault) and then
    /// `posix_fadvise(POSIX_FADV_DONTNEED)` on the file range (which the kernel rounds inward,
    /// so the shared first and last pages stay cached).
    pub fn drop_page_cache(&self, hf_name: &str) -> Result<(), WeightsError> {
        self.drop_page_cache_edges(hf_name, false, false)
    }

    /// [`Checkpoint::drop_page_cache`], and also the tensor's partial first page (`head`) and
    /// partial last page (`tail`), which it shares with the tensors before and after it: for a
    /// caller that knows those neighbours are not needed. Those pages are always unmapped from
    /// this process (harmless: a neighbour's next touch maps them again from the page cache), and
    /// evicted from the page cache only when asked.
    pub fn drop_page_cache_edges(
        &self,
        hf_name: &str,
        head: bool,
        tail: bool,
    ) -> Result<(), WeightsError> {
        let Some(span) = self.span(hf_name)? else {
            return Ok(());
        };
        drop_span(&span, hf_name, head, tail)
    }

    /// [`Checkpoint::drop_page_cache`] for the bytes `part` of the tensor (offsets within it,
    /// clamped to its length): for a caller done with one piece of a tensor while it still
    /// needs the rest. Pages shared with the bytes before and after `part` stay cached.
    pub fn drop_page_cache_part(
        &self,
        hf_name: &str,
        part: std::ops::Range<usize>,
    ) -> Result<(), WeightsError> {
        let Some(mut span) = self.span(hf_name)? else {
            return Ok(());
        };
        let len = span.end - span.start;
        span.end = span.start + part.end.min(len);
        span.start += part.start.min(len);
        if span.start >= span.end {
            return Ok(());
        }
        drop_span(&span, hf_name, false, false)
    }
}

/// Unmaps the pages `span` touches and evicts its whole pages (and, with `head` / `tail`, its
/// partial first / last page) from the page cache.
fn drop_span(span: &Span, hf_name: &str, head: bool, tail: bool) -> Result<(), WeightsError> {
    let page = page_size();
    let (s, e) = span.outward(page);
    // SAFETY: [s, e) is page-aligned and within the pages of a live read-only map (see
    // `advise`); MADV_DONTNEED on a read-only file mapping only drops page-table entries.
    let rc = unsafe { libc::madvise(s as *mut libc::c_void, e - s, libc::MADV_DONTNEED) };
    if rc != 0 {
        return Err(WeightsError::Syscall {
            tensor: hf_name.to_string(),
            op: "madvise",
            source: std::io::Error::last_os_error(),
        });
    }
    // File offsets; the kernel drops only whole pages inside the range, so rounding the
    // ends outward is what includes the shared pages.
    let start = if head {
        span.start / page * page
    } else {
        span.start
    };
    let end = if tail {
        span.end.div_ceil(page) * page
    } else {
        span.end
    };
    // SAFETY: plain syscall on an open descriptor owned by this checkpoint; no memory is
    // passed.
    let rc = unsafe {
        libc::posix_fadvise(
            span.fd,
            start as libc::off_t,
            (end - start) as libc::off_t,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    if rc != 0 {
        return Err(WeightsError::Syscall {
            tensor: hf_name.to_string(),
            op: "posix_fadvise",
            source: std::io::Error::from_raw_os_error(rc),
        });
    }
    Ok(())
}

/// Set to `0` to map weights with 4 KiB pages only (`MADV_NOHUGEPAGE`): an escape hatch, and the
/// "before" side of the benchmark that measures what huge pages buy.
pub const HUGE_PAGES_ENV: &str = "SWARMLM_HUGE_PAGES";

impl Checkpoint {
    /// Asks the kernel to map every weight file with 2 MiB pages where it can (`MADV_HUGEPAGE`
    /// on each whole map, or `MADV_NOHUGEPAGE` when [`HUGE_PAGES_ENV`] is `0`); returns whether
    /// the kernel accepted the advice for every file.
    ///
    /// Current kernels (ext4 since Linux 6.x) cache files in large folios and map a 2 MiB folio
    /// with one page-middle-directory entry instead of 512 page-table entries when the virtual
    /// address allows (the kernel aligns large file maps to 2 MiB). With the advice, a fault
    /// that has to read from disk allocates 2 MiB folios, so a checkpoint that swarmlm loaded
    /// from disk stays in huge-page-mappable folios; pages cached in small folios by other
    /// readers stay small (a file-backed collapse needs a kernel option this machine lacks).
    /// Measured on the 6.33 GB model (BENCHMARKS.md, issue 9): with 4 KiB mappings every 4 KiB
    /// of every weight stream costs a TLB miss whose page walk misses the caches (1.8 GB of
    /// weights per token, 3.6 MB of page tables), and filling the page tables costs ~90 ms
    /// per GB; huge mappings remove both. Advice only: a kernel without transparent huge pages
    /// refuses it and nothing changes.
    pub fn advise_huge_pages(&self) -> bool {
        let flag = if std::env::var(HUGE_PAGES_ENV).is_ok_and(|v| v.trim() == "0") {
            libc::MADV_NOHUGEPAGE
        } else {
            libc::MADV_HUGEPAGE
        };
        let mut all = true;
        for f in &self.files {
            let b = f.bytes();
            if b.is_empty() {
                continue;
            }
            // SAFETY: the range is exactly one live read-only map (page-aligned start; the
            // kernel rounds the length up to whole pages of the same map). The advice changes
            // only how the pages are mapped, never memory contents.
            let rc = unsafe { libc::madvise(b.as_ptr() as *mut libc::c_void, b.len(), flag) };
            all &= rc == 0;
        }
        all
    }
}
