//! One read-only memory map of one checkpoint file, kept open for the checkpoint's lifetime.
//!
//! This is the only place that creates maps. It refuses anything but a regular file (a FIFO or
//! device could change under us or block), records the size it saw at open, and maps exactly
//! that many bytes read-only; every later bounds check is against that size.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapOptions};

use crate::WeightsError;

#[derive(Debug)]
pub(crate) struct MappedFile {
    pub path: PathBuf,
    pub file: File,
    /// `None` for an empty file: a zero-length mapping is not possible, and every format check
    /// fails on it anyway.
    map: Option<Mmap>,
}

impl MappedFile {
    /// Opens and maps `path` (symlinks followed, as in the hub cache's blob links).
    pub fn open(path: &Path) -> Result<Self, WeightsError> {
        // O_NONBLOCK so that a FIFO in place of a weight file is reported, not waited on; it
        // has no effect on regular files.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| WeightsError::io(path, "open", e))?;
        // fstat the opened descriptor, not the path, so the check applies to what we map.
        let meta = file
            .metadata()
            .map_err(|e| WeightsError::io(path, "stat", e))?;
        if !meta.file_type().is_file() {
            return Err(WeightsError::NotRegularFile {
                path: path.to_path_buf(),
            });
        }
        let len = meta.len();
        let map_len = usize::try_from(len).map_err(|_| {
            WeightsError::io(
                path,
                "mmap",
                std::io::Error::other("file larger than the address space"),
            )
        })?;
        let map = if map_len == 0 {
            None
        } else {
            // SAFETY: the map is read-only (PROT_READ, MAP_SHARED, so never copied-on-write); swarmlm never writes to
            // or truncates a checkpoint file it has open (files are verified and complete before
            // they are opened), and the length mapped is the length fstat reported for this very
            // descriptor. The remaining hazard (another process truncating the file) is described
            // in the crate documentation.
            let m = unsafe { MmapOptions::new().len(map_len).map(&file) }
                .map_err(|e| WeightsError::io(path, "mmap", e))?;
            Some(m)
        };
        Ok(MappedFile {
            path: path.to_path_buf(),
            file,
            map,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.map {
            Some(m) => m,
            None => &[],
        }
    }

    pub fn raw_fd(&self) -> i32 {
        self.file.as_raw_fd()
    }
}
