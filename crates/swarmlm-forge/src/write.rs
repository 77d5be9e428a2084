//! Putting files on disk without ever leaving one that looks complete but is not: every file is
//! written under `<name>.partial`, flushed to disk, and only then renamed to its real name.
//! Shards are streamed: the data is generated in parallel into a few bounded buffers while a
//! writer thread drains them, so memory stays flat whatever the checkpoint size.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use rayon::prelude::*;

use crate::error::ForgeError;
use crate::rng;
use crate::tensors::{Init, ShardPlan};

/// Size of one generation/write buffer.
const BUF_BYTES: usize = 8 << 20;
/// At most this many buffers exist at once (one being filled, one queued, one being written).
const MAX_BUFFERS: usize = 3;
/// Parallel work unit inside a buffer (even, so it never splits a bf16 element).
const CHUNK_BYTES: usize = 256 << 10;

fn partial_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.partial"))
}

fn create_partial(dir: &Path, name: &str) -> Result<(PathBuf, File), ForgeError> {
    let tmp = partial_path(dir, name);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| ForgeError::io("create", &tmp, e))?;
    Ok((tmp, file))
}

/// Flush `file` to disk and give it its real name, refusing to replace anything.
fn publish(dir: &Path, name: &str, tmp: &Path, file: File) -> Result<u64, ForgeError> {
    file.sync_all()
        .map_err(|e| ForgeError::io("sync", tmp, e))?;
    let len = file
        .metadata()
        .map_err(|e| ForgeError::io("stat", tmp, e))?
        .len();
    drop(file);
    let dest = dir.join(name);
    if fs::symlink_metadata(&dest).is_ok() {
        let _ = fs::remove_file(tmp);
        return Err(ForgeError::WouldOverwrite { path: dest });
    }
    fs::rename(tmp, &dest).map_err(|e| ForgeError::io("rename into place", &dest, e))?;
    Ok(len)
}

/// Write a small file (JSON, tokenizer) in one go, atomically.
pub(crate) fn write_small(dir: &Path, name: &str, bytes: &[u8]) -> Result<u64, ForgeError> {
    let (tmp, mut file) = create_partial(dir, name)?;
    if let Err(e) = file.write_all(bytes) {
        drop(file);
        let _ = fs::remove_file(&tmp);
        return Err(ForgeError::io("write", &tmp, e));
    }
    publish(dir, name, &tmp, file).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Make sure the directory entries (the renames) are on disk too.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), ForgeError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ForgeError::io("sync directory", dir, e))
}

/// Stream one shard to disk. `on_bytes` is told each time a buffer of data has been produced.
pub(crate) fn write_shard(
    dir: &Path,
    shard: &ShardPlan,
    seed: u64,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<u64, ForgeError> {
    let (tmp, file) = create_partial(dir, &shard.file_name)?;
    let result = stream_shard(file, shard, seed, on_bytes)
        .map_err(|e| ForgeError::io("write", &tmp, e))
        .and_then(|file| publish(dir, &shard.file_name, &tmp, file));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Where each tensor's bytes are and how to make them.
struct Source {
    offset: u64,
    end: u64,
    init: Init,
    key: u64,
}

fn stream_shard(
    mut file: File,
    shard: &ShardPlan,
    seed: u64,
    on_bytes: &mut dyn FnMut(u64),
) -> std::io::Result<File> {
    file.write_all(&shard.prefix)?;
    on_bytes(shard.prefix.len() as u64);
    let sources: Vec<Source> = shard
        .tensors
        .iter()
        .map(|t| Source {
            offset: t.offset,
            end: t.offset + t.bytes,
            init: t.spec.init,
            key: rng::tensor_key(seed, &t.spec.name),
        })
        .collect();
    let total = shard.data_bytes;

    std::thread::scope(|scope| {
        let (full_tx, full_rx) = mpsc::sync_channel::<Vec<u8>>(1);
        let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
        let writer = scope.spawn(move || -> std::io::Result<File> {
            let mut flush = Writeback::new(shard.prefix.len() as u64);
            for buf in full_rx {
                file.write_all(&buf)?;
                flush.wrote(&file, buf.len() as u64);
                // The generator may have stopped already; a lost buffer is then fine.
                let _ = empty_tx.send(buf);
            }
            Ok(file)
        });
        let mut pos = 0u64;
        let mut allocated = 0usize;
        while pos < total {
            let len = (total - pos).min(BUF_BYTES as u64) as usize;
            let mut buf = match empty_rx.try_recv() {
                Ok(b) => b,
                Err(_) if allocated < MAX_BUFFERS => {
                    allocated += 1;
                    Vec::with_capacity(BUF_BYTES)
                }
                Err(_) => match empty_rx.recv() {
                    Ok(b) => b,
                    // The writer is gone (it failed): its error is reported by join below.
                    Err(_) => break,
                },
            };
            buf.resize(len, 0);
            fill(&mut buf, pos, &sources);
            if full_tx.send(buf).is_err() {
                break;
            }
            pos += len as u64;
            on_bytes(len as u64);
        }
        drop(full_tx);
        match writer.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Keeps the disk busy from the first buffer on, instead of letting the kernel collect
/// gigabytes of dirty pages and write them only at the shard's closing fsync (while generation
/// waits): each written buffer is handed to writeback at once, and the writer waits for data
/// older than [`Writeback::LAG`], so at most that much is dirty and the fsync is short.
struct Writeback {
    /// File offset where the next write lands.
    end: u64,
    /// Everything before this offset is known to be on disk.
    done: u64,
}

impl Writeback {
    /// Dirty data allowed in flight: enough for the device to stream at full speed.
    const LAG: u64 = 64 << 20;

    fn new(start: u64) -> Writeback {
        Writeback {
            end: start,
            done: 0,
        }
    }

    /// `len` bytes were just written at the current end of `file`.
    fn wrote(&mut self, file: &File, len: u64) {
        let start = self.end;
        self.end += len;
        // Both calls are only hints to the kernel about when to write: a failure here changes
        // no data, and any I/O error is reported again by the fsync that publishes the file.
        let _ = sync_range(file, start, len, false);
        if self.end - self.done > 2 * Self::LAG {
            let upto = self.end - Self::LAG;
            let _ = sync_range(file, self.done, upto - self.done, true);
            self.done = upto;
        }
    }
}

/// Start writeback of `len` bytes at `offset` of `file`, and with `wait` also wait until they
/// are on disk (Linux `sync_file_range`; elsewhere the kernel decides alone).
#[cfg(target_os = "linux")]
fn sync_range(file: &File, offset: u64, len: u64, wait: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = if wait {
        libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER
    } else {
        libc::SYNC_FILE_RANGE_WRITE
    };
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Ok(());
    };
    // SAFETY: a plain system call on an open descriptor that `file` keeps alive; no memory is
    // passed.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn sync_range(_file: &File, _offset: u64, _len: u64, _wait: bool) -> std::io::Result<()> {
    Ok(())
}

/// Fill `buf`, which holds data bytes `pos..pos+buf.len()` of the shard, in parallel.
fn fill(buf: &mut [u8], pos: u64, sources: &[Source]) {
    buf.par_chunks_mut(CHUNK_BYTES)
        .enumerate()
        .for_each(|(c, chunk)| fill_range(chunk, pos + (c * CHUNK_BYTES) as u64, sources));
}

fn fill_range(mut out: &mut [u8], mut start: u64, sources: &[Source]) {
    let mut k = sources.partition_point(|s| s.end <= start);
    while !out.is_empty() {
        let s = &sources[k];
        let n = ((s.end - start) as usize).min(out.len());
        let (head, tail) = std::mem::take(&mut out).split_at_mut(n);
        match s.init {
            Init::Normal => rng::fill_normal_bf16(s.key, (start - s.offset) / 2, head),
            Init::Ones => rng::fill_ones_bf16(head),
        }
        out = tail;
        start += n as u64;
        k += 1;
    }
}
