//! Where an expert's bytes come from when the pager makes it resident.
//!
//! Today every expert comes from the local checkpoint files: the I/O thread `pread`s the
//! expert's three byte ranges, which puts them in the page cache, so the compute thread's later
//! reads through the memory map are page-cache hits (minor faults, no disk wait).
//!
//! **Extension point.** [`ExpertSource`] is deliberately a plain enum, not a trait: a second way
//! of obtaining the bytes — e.g. pieces received from the swarm for an expert that is not yet
//! on disk — is a new variant whose `fill` writes the verified bytes into the same file range
//! (which also leaves them in the page cache) and returns the byte count. The pager's state
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

/// The I/O thread's own descriptors of the checkpoint files and a reusable read buffer.
pub(crate) struct Reader {
    files: Vec<(PathBuf, File)>,
    buf: Vec<u8>,
}

/// Reads in pieces of this size: large enough for full-speed sequential reads, small enough to
/// stay in the CPU cache.
const CHUNK: usize = 1 << 20;

impl Reader {
    /// Opens `paths` read-only with readahead disabled (`POSIX_FADV_RANDOM`), so a read
    /// brings in exactly the expert's range and never its neighbours, which would be resident
    /// bytes the budget does not account for.
    pub fn open(paths: &[PathBuf]) -> std::io::Result<Reader> {
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
        Ok(Reader {
            files,
            buf: vec![0; CHUNK],
        })
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

    /// Makes the source's bytes resident in the page cache; returns the bytes read.
    pub fn fill(&mut self, source: &ExpertSource) -> Result<u64, String> {
        match source {
            ExpertSource::LocalFiles { ranges } => {
                let mut total = 0;
                for r in ranges {
                    total += self.read_range(r)?;
                }
                Ok(total)
            }
        }
    }

    fn read_range(&mut self, r: &FileRange) -> Result<u64, String> {
        let (path, file) = self
            .files
            .get(r.file)
            .ok_or_else(|| format!("file index {} out of range", r.file))?;
        let end = r.offset + r.len;
        let mut at = r.offset;
        while at < end {
            let want = ((end - at) as usize).min(self.buf.len());
            let n = file
                .read_at(&mut self.buf[..want], at)
                .map_err(|e| format!("{}: read at {at}: {e}", path.display()))?;
            if n == 0 {
                return Err(format!(
                    "{}: unexpected end of file at {at} (expected bytes up to {end})",
                    path.display()
                ));
            }
            at += n as u64;
        }
        Ok(r.len)
    }
}
