//! Where an expert's bytes come from when the pager makes it resident.
//!
//! Today every expert comes from the local checkpoint files: the I/O threads `pread` the
//! expert's three byte ranges, which puts them in the page cache, so the compute thread's later
//! reads through the memory map are page-cache hits (minor faults, no disk wait). It reads
//! with several threads at once (see [`READERS`]): one read at a time leaves most of a virtual
//! disk's bandwidth unused. An expert is cut into pieces ([`Files::plan`]) that the threads
//! take one by one; a streamed expert into row blocks ([`stream_blocks`], [`Files::plan_stream`])
//! that are computed and dropped in order as they arrive.
//!
//! **Extension point.** [`ExpertSource`] is deliberately a plain enum, not a trait: a second way
//! of obtaining the bytes — e.g. pieces received from the swarm for an expert that is not yet
//! on disk — is a new variant whose pieces ([`Files::plan`], [`Files::read`]) write the verified
//! bytes into the same file range (which also leaves them in the page cache). The pager's state
//! machine (`Queued → Loading → Ready | Failed`, the condvar the compute thread waits on, the
//! budget accounting) does not change: it only sees "this expert's bytes are now resident" or
//! "they could not be obtained".

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// One contiguous byte range of one checkpoint file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRange {
    /// Index into the loader's open files (the checkpoint's files, in load order).
    pub file: usize,
    pub offset: u64,
    pub len: u64,
}

/// How to obtain one expert's bytes (its w1, w3 and w2 tensors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpertSource {
    /// Read from the local checkpoint files into the page cache.
    LocalFiles { ranges: Vec<FileRange> },
}

/// The I/O threads' own descriptors of the checkpoint files, shared by the [`READERS`] threads.
pub(crate) struct Files {
    files: Vec<(PathBuf, File)>,
}

/// One read of at most a piece size: `(file index, offset, length)`.
pub(crate) type Piece = (usize, u64, usize);

/// Reads in pieces of at most this size. The files are opened with `POSIX_FADV_RANDOM`, so a
/// `pread` reads exactly its bytes (no readahead) and waits for them.
const MAX_CHUNK: usize = 16 << 20;
/// The read buffers are anonymous memory outside the expert budget, so they are kept to
/// 1/32 of it (`READERS` × budget / 128): a 2 GiB budget gets the measured best 4 × 16 MiB, a
/// small one smaller pieces rather than a peak RSS the budget did not promise.
const BUDGET_SHARE_PER_READER: u64 = 128;
const MIN_CHUNK: usize = 256 << 10;

/// The read piece size for a budget of `budget_bytes`.
pub(crate) fn chunk_for_budget(budget_bytes: u64) -> usize {
    let share = usize::try_from(budget_bytes / BUDGET_SHARE_PER_READER).unwrap_or(MAX_CHUNK);
    share.clamp(MIN_CHUNK, MAX_CHUNK)
}
/// Reader threads, each with one read of a piece in flight. Measured with
/// `benchmarks/pager_io.py` reading 288 MiB ranges of the forged Mixtral files on the
/// benchmark machine's virtual disk (idle): one 1 MiB `pread` at a time 554 MB/s, one 4 MiB
/// 702, `dd iflag=direct bs=16M` 645, 4 threads × 1 MiB 859, 4 × 4 MiB 942, kernel readahead
/// (`POSIX_FADV_WILLNEED`) 32–64 MiB ahead of a 4 MiB `pread` 940–953, 4 × 16 MiB and
/// 8 × 8 MiB 1020. The disk wants ~64 MiB in flight; 4 readers × 16 MiB get there with the
/// fewest threads (the buffers, 64 MiB, are the price, and are scaled down with the budget:
/// [`chunk_for_budget`]). The threads live as long as the pager and take the next piece of
/// whichever expert is loading, so the queue at the disk does not drain between experts.
pub(crate) const READERS: usize = 4;

impl Files {
    /// Opens `paths` read-only with readahead disabled (`POSIX_FADV_RANDOM`), so a read
    /// brings in exactly the expert's range and never its neighbours, which would be resident
    /// bytes the budget does not account for.
    pub fn open(paths: &[PathBuf]) -> std::io::Result<Files> {
        let mut files = Vec::with_capacity(paths.len());
        for p in paths {
            let f = File::open(p)?;
            use std::os::fd::AsRawFd;
            // SAFETY: plain syscall on a descriptor we own; no memory is passed.
            let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
            if rc != 0 {
                return Err(std::io::Error::from_raw_os_error(rc));
            }
            files.push((p.clone(), f));
        }
        Ok(Files { files })
    }

    /// Asks the kernel to drop every unmapped page of the checkpoint files from the page cache.
    /// Per-tensor drops cannot evict a large folio that straddles two tensors (files written
    /// or read sequentially are cached in folios of up to 2 MiB); a whole-file drop can.
    pub fn drop_all(&self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        for (_, f) in &self.files {
            // SAFETY: plain syscall on a descriptor we own; no memory is passed.
            let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            if rc != 0 {
                return Err(std::io::Error::from_raw_os_error(rc));
            }
        }
        Ok(())
    }

    /// The reads that make the source's bytes resident in the page cache, in file order, each
    /// at most `chunk` bytes.
    pub fn plan(&self, source: &ExpertSource, chunk: usize) -> Result<Vec<Piece>, String> {
        match source {
            ExpertSource::LocalFiles { ranges } => {
                let mut pieces = Vec::new();
                for r in ranges {
                    let file = self.file_of(r)?;
                    let mut at = r.offset;
                    while at < r.offset + r.len {
                        let len = (r.offset + r.len - at).min(chunk as u64);
                        pieces.push((file, at, len as usize));
                        at += len;
                    }
                }
                Ok(pieces)
            }
        }
    }

    /// The reads that bring in a streamed expert block by block (see [`stream_blocks`]):
    /// each block's rows of w1 and w3, or of w2, one piece per tensor, in block order.
    pub fn plan_stream(
        &self,
        source: &ExpertSource,
        blocks: &[Block],
        row_bytes: [u64; 3],
    ) -> Result<Vec<Piece>, String> {
        match source {
            ExpertSource::LocalFiles { ranges } => {
                if ranges.len() != 3 {
                    return Err(format!("{} tensor ranges, expected 3", ranges.len()));
                }
                let mut pieces = Vec::new();
                for b in blocks {
                    for &k in b.phase.tensors() {
                        let r = &ranges[k];
                        let file = self.file_of(r)?;
                        let span = b.span(k, row_bytes);
                        if span.end > r.len {
                            return Err(format!(
                                "tensor {k} holds {} bytes, rows up to {} need {}",
                                r.len, b.rows.end, span.end
                            ));
                        }
                        pieces.push((file, r.offset + span.start, b.bytes(k, row_bytes) as usize));
                    }
                }
                Ok(pieces)
            }
        }
    }

    /// The index of `r`'s file among the open files, checked.
    fn file_of(&self, r: &FileRange) -> Result<usize, String> {
        if r.file >= self.files.len() {
            return Err(format!("file index {} out of range", r.file));
        }
        Ok(r.file)
    }

    /// Reads one piece into `buf` (at least the piece's length), which leaves its bytes in
    /// the page cache.
    pub fn read(&self, piece: Piece, buf: &mut [u8]) -> Result<(), String> {
        let (file, offset, len) = piece;
        let (path, f) = &self.files[file];
        read_exact_at(f, path, &mut buf[..len], offset)
    }
}

/// The two halves of a SwiGLU expert, in the order a streamed expert is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `h = silu(w1·x) ⊙ (w3·x)`: needs the same rows of w1 and w3.
    GateUp,
    /// `out += scale · w2·h`: needs rows of w2 and the whole of `h`.
    Down,
}

impl Phase {
    /// The expert tensors (0 = w1, 1 = w3, 2 = w2) a block of this phase reads, in order.
    pub fn tensors(self) -> &'static [usize] {
        match self {
            Phase::GateUp => &[0, 1],
            Phase::Down => &[2],
        }
    }
}

/// One step of a streamed expert: rows `rows` of its phase's tensors, which are the pieces
/// `pieces` of its stream plan ([`Files::plan_stream`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub phase: Phase,
    pub rows: std::ops::Range<usize>,
    pub pieces: std::ops::Range<usize>,
}

impl Block {
    /// Where this block's rows of tensor `k` (0 = w1, 1 = w3, 2 = w2) lie in that tensor, in
    /// bytes, for rows of `row_bytes[k]` bytes: the piece that is planned, read, held and
    /// dropped for it.
    pub fn span(&self, k: usize, row_bytes: [u64; 3]) -> std::ops::Range<u64> {
        self.rows.start as u64 * row_bytes[k]..self.rows.end as u64 * row_bytes[k]
    }

    /// The length of [`Block::span`]: the bytes of its piece.
    pub fn bytes(&self, k: usize, row_bytes: [u64; 3]) -> u64 {
        let span = self.span(k, row_bytes);
        span.end - span.start
    }
}

/// Cuts an expert of `inter × hidden` into blocks whose pieces are at most `piece` bytes
/// (at least one row): all gate/up blocks, then all down blocks. Each piece is dropped from
/// memory as soon as its block is computed, so a streamed expert holds only the pieces being
/// read or computed, never a whole slot.
pub(crate) fn stream_blocks(inter: usize, hidden: usize, piece: usize) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut next_piece = 0;
    for (phase, rows, cols) in [(Phase::GateUp, inter, hidden), (Phase::Down, hidden, inter)] {
        let per = (piece / (2 * cols).max(1)).max(1);
        let mut r = 0;
        while r < rows {
            let end = (r + per).min(rows);
            let n = phase.tensors().len();
            blocks.push(Block {
                phase,
                rows: r..end,
                pieces: next_piece..next_piece + n,
            });
            next_piece += n;
            r = end;
        }
    }
    blocks
}

/// `pread` until `buf` is full, naming the file and offset on error or early end of file.
fn read_exact_at(
    f: &File,
    path: &std::path::Path,
    buf: &mut [u8],
    offset: u64,
) -> Result<(), String> {
    let end = offset + buf.len() as u64;
    let mut done = 0;
    while done < buf.len() {
        let at = offset + done as u64;
        let n = f
            .read_at(&mut buf[done..], at)
            .map_err(|e| format!("{}: read at {at}: {e}", path.display()))?;
        if n == 0 {
            return Err(format!(
                "{}: unexpected end of file at {at} (expected bytes up to {end})",
                path.display()
            ));
        }
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_buffers_stay_a_small_share_of_the_budget() {
        assert_eq!(chunk_for_budget(2 << 30), 16 << 20);
        assert_eq!(chunk_for_budget(1400 << 20), 1400 << 13);
        assert_eq!(chunk_for_budget(48 << 20), 384 << 10);
        assert_eq!(chunk_for_budget(1 << 20), 256 << 10);
        for budget in [1u64 << 20, 48 << 20, 1400 << 20, 2 << 30, 64 << 30] {
            let buffers = 4 * chunk_for_budget(budget) as u64;
            assert!(buffers <= (budget / 32).max(1 << 20), "{budget}: {buffers}");
        }
    }

    #[test]
    fn stream_blocks_cover_every_row_once_in_pieces_of_at_most_the_size() {
        // Mixtral's expert (14336 × 4096) in the pieces of a 672 MiB budget (2.6 MiB): 336
        // rows of w1 and w3 (8 KiB each), 96 rows of w2 (28 KiB each).
        let blocks = stream_blocks(14336, 4096, 672 << 12);
        let (gate, down): (Vec<_>, Vec<_>) = blocks.iter().partition(|b| b.phase == Phase::GateUp);
        for (list, rows, cols) in [(&gate, 14336, 4096), (&down, 4096, 14336)] {
            assert_eq!(list[0].rows.start, 0);
            assert_eq!(list.last().unwrap().rows.end, rows);
            for w in list.windows(2) {
                assert_eq!(w[0].rows.end, w[1].rows.start);
            }
            assert!(list.iter().all(|b| b.rows.len() * cols * 2 <= 672 << 12));
        }
        assert_eq!(gate[0].rows.len(), 336);
        assert_eq!(down[0].rows.len(), 96);
        // Pieces are numbered in block order: two per gate/up block, one per down block.
        assert_eq!(blocks[0].pieces, 0..2);
        assert_eq!(
            blocks[gate.len()].pieces,
            2 * gate.len()..2 * gate.len() + 1
        );
        // A row larger than the piece still makes one block per row.
        let tiny = stream_blocks(4, 1024, 16);
        let gate_rows: Vec<usize> = tiny
            .iter()
            .filter(|b| b.phase == Phase::GateUp)
            .map(|b| b.rows.len())
            .collect();
        assert_eq!(gate_rows, vec![1; 4]);
    }
}
