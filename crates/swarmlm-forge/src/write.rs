//! Putting files on disk without ever leaving one that looks complete but is not: every file is
//! written under `<name>.partial`, flushed to disk, and only then renamed to its real name.
//! Shards are streamed: the data is generated in parallel into a few bounded buffers while a
//! writer thread drains them, so memory stays flat whatever the checkpoint size. Where the
//! filesystem allows, shards are written with direct I/O, which saves the CPU the copy into the
//! page cache; elsewhere they go through the page cache with writeback started early.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use rayon::prelude::*;

use crate::error::ForgeError;
use crate::rng;
use crate::tensors::{Init, ShardPlan};

/// Size of one generation/write buffer (a multiple of [`ALIGN`]).
#[cfg(not(test))]
const BUF_BYTES: usize = 8 << 20;
/// Small in unit tests, so that small shards span many buffers.
#[cfg(test)]
const BUF_BYTES: usize = 64 << 10;
const _: () = assert!(BUF_BYTES.is_multiple_of(ALIGN));
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
    write_shard_with(dir, shard, seed, true, on_bytes)
}

/// [`write_shard`], with direct I/O allowed or not (tests compare both).
fn write_shard_with(
    dir: &Path,
    shard: &ShardPlan,
    seed: u64,
    allow_direct: bool,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<u64, ForgeError> {
    let sources: Vec<Source> = shard
        .tensors
        .iter()
        .map(|t| Source {
            offset: t.offset,
            end: t.offset + t.bytes,
            fill: match t.spec.init {
                Init::Normal => Fill::NormalBf16 {
                    key: rng::tensor_key(seed, &t.spec.name),
                },
                Init::Ones => Fill::OnesBf16,
            },
        })
        .collect();
    let file = StreamedFile {
        name: &shard.file_name,
        prefix: &shard.prefix,
        data_bytes: shard.data_bytes,
        sources: &sources,
    };
    write_streamed(dir, &file, allow_direct, on_bytes)
}

/// A file made of a fixed prefix (a header) followed by generated data.
pub(crate) struct StreamedFile<'a> {
    pub name: &'a str,
    pub prefix: &'a [u8],
    pub data_bytes: u64,
    /// Cover the data contiguously, in order, from byte 0 to `data_bytes`.
    pub sources: &'a [Source],
}

/// Stream `file` into `dir` under its `.partial` name and publish it when complete.
pub(crate) fn write_streamed(
    dir: &Path,
    file: &StreamedFile<'_>,
    allow_direct: bool,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<u64, ForgeError> {
    let (tmp, out) = create_partial(dir, file.name)?;
    let direct = if allow_direct {
        open_direct(&tmp)
    } else {
        None
    };
    let result = stream_file(out, direct, file, on_bytes)
        .map_err(|e| ForgeError::io("write", &tmp, e))
        .and_then(|out| publish(dir, file.name, &tmp, out));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A second descriptor on `path` that bypasses the page cache, when the filesystem allows it:
/// with it the kernel DMAs straight from our buffers, where a buffered write would spend about
/// as much CPU copying the data into the page cache as generating it.
#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_path: &Path) -> Option<File> {
    None
}

/// Where a run of data bytes is and how to make it.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub offset: u64,
    pub end: u64,
    pub fill: Fill,
}

/// How a run of data bytes is made. Every source starts at an offset, and every parallel chunk
/// at a data position, that is a multiple of 4, so no variant ever sees half an element.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fill {
    /// The tensor with generator key `key`, bf16, elements in order.
    NormalBf16 { key: u64 },
    /// bf16 1.0.
    OnesBf16,
    /// The bf16 values of `key` widened to f32 (exact), as llama.cpp's converter stores
    /// small tensors.
    NormalF32 { key: u64 },
    /// f32 1.0.
    OnesF32,
    /// The bf16 tensor `key` of rows of `cols` elements, with the rows of each block of
    /// `head_rows` reordered from RoPE's half-split layout to the interleaved one GGUF uses
    /// (see [`crate::gguf::permuted_source_row`]).
    PermutedBf16 { key: u64, cols: u64, head_rows: u64 },
    /// Alignment padding.
    Zeros,
}

/// Direct I/O wants memory, file offsets and lengths aligned to the device's logical block;
/// 4096 covers every common device.
const ALIGN: usize = 4096;

/// A generation/write buffer holding `len` bytes of the file, its start aligned to [`ALIGN`].
struct Buffer {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl Buffer {
    fn new() -> Buffer {
        let raw = vec![0u8; BUF_BYTES + ALIGN];
        let addr = raw.as_ptr() as usize;
        let start = addr.next_multiple_of(ALIGN) - addr;
        Buffer { raw, start, len: 0 }
    }

    fn data(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    fn data_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }

    /// The data followed by zeros up to a whole number of blocks, for a direct write (the file
    /// is cut back to its real length at the end).
    fn padded(&mut self) -> &[u8] {
        let end = self.start + self.len.next_multiple_of(ALIGN);
        self.raw[self.start + self.len..end].fill(0);
        &self.raw[self.start..end]
    }
}

/// The writer's side: direct writes while the filesystem takes them, buffered ones otherwise.
struct Output {
    file: File,
    direct: Option<File>,
    wrote_direct: bool,
    flush: Writeback,
}

impl Output {
    /// Write `buf`, which holds the file's bytes from `pos` (a multiple of [`BUF_BYTES`]).
    fn write(&mut self, pos: u64, buf: &mut Buffer) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        if let Some(direct) = &self.direct {
            match direct.write_all_at(buf.padded(), pos) {
                Ok(()) => {
                    self.wrote_direct = true;
                    return Ok(());
                }
                // The filesystem opened the file for direct I/O but refuses it (alignment it
                // wants bigger, or no support): write this and all later buffers through the
                // page cache, over whatever part of this one got through.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.direct = None,
                Err(e) => return Err(e),
            }
        }
        self.file.write_all_at(buf.data(), pos)?;
        self.flush.wrote(&self.file, pos, buf.len as u64);
        Ok(())
    }

    /// Cut off the padding of the last direct write.
    fn finish(self, len: u64) -> std::io::Result<File> {
        if self.wrote_direct {
            self.file.set_len(len)?;
        }
        Ok(self.file)
    }
}

fn stream_file(
    file: File,
    direct: Option<File>,
    streamed: &StreamedFile<'_>,
    on_bytes: &mut dyn FnMut(u64),
) -> std::io::Result<File> {
    let sources = streamed.sources;
    let prefix = streamed.prefix;
    let file_len = prefix.len() as u64 + streamed.data_bytes;

    std::thread::scope(|scope| {
        let (full_tx, full_rx) = mpsc::sync_channel::<(u64, Buffer)>(1);
        let (empty_tx, empty_rx) = mpsc::channel::<Buffer>();
        let writer = scope.spawn(move || -> std::io::Result<File> {
            let mut out = Output {
                file,
                direct,
                wrote_direct: false,
                flush: Writeback::new(),
            };
            for (pos, mut buf) in full_rx {
                out.write(pos, &mut buf)?;
                // The generator may have stopped already; a lost buffer is then fine.
                let _ = empty_tx.send(buf);
            }
            out.finish(file_len)
        });
        // Buffers cover the file (header, then data) in order, so every write but the last
        // starts and ends on a block boundary.
        let mut pos = 0u64;
        let mut allocated = 0usize;
        while pos < file_len {
            let len = (file_len - pos).min(BUF_BYTES as u64) as usize;
            let mut buf = match empty_rx.try_recv() {
                Ok(b) => b,
                Err(_) if allocated < MAX_BUFFERS => {
                    allocated += 1;
                    Buffer::new()
                }
                Err(_) => match empty_rx.recv() {
                    Ok(b) => b,
                    // The writer is gone (it failed): its error is reported by join below.
                    Err(_) => break,
                },
            };
            buf.len = len;
            fill_file(buf.data_mut(), pos, prefix, sources);
            if full_tx.send((pos, buf)).is_err() {
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

/// Fill `buf` with the file's bytes from `pos`: the part of the header it covers, then data.
fn fill_file(buf: &mut [u8], pos: u64, prefix: &[u8], sources: &[Source]) {
    let mut data = buf;
    let mut data_pos = 0u64;
    if let Some(head) = prefix.get(pos as usize..) {
        let n = head.len().min(data.len());
        data[..n].copy_from_slice(&head[..n]);
        data = &mut data[n..];
    } else {
        data_pos = pos - prefix.len() as u64;
    }
    fill(data, data_pos, sources);
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

    fn new() -> Writeback {
        Writeback { end: 0, done: 0 }
    }

    /// `len` bytes were just written at `start` (the end of what was written before).
    fn wrote(&mut self, file: &File, start: u64, len: u64) {
        self.end = start + len;
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
        let at = start - s.offset;
        match s.fill {
            Fill::NormalBf16 { key } => rng::fill_normal_bf16(key, at / 2, head),
            Fill::OnesBf16 => rng::fill_ones_bf16(head),
            Fill::NormalF32 { key } => fill_normal_f32(key, at / 4, head),
            Fill::OnesF32 => {
                for x in head.chunks_exact_mut(4) {
                    x.copy_from_slice(&1.0f32.to_le_bytes());
                }
            }
            Fill::PermutedBf16 {
                key,
                cols,
                head_rows,
            } => fill_permuted_bf16(key, cols, head_rows, at / 2, head),
            Fill::Zeros => head.fill(0),
        }
        out = tail;
        start += n as u64;
        k += 1;
    }
}

/// Elements `first..` of tensor `key` as f32 (each the exact value of its bf16).
fn fill_normal_f32(key: u64, first: u64, out: &mut [u8]) {
    let mut bf = [0u8; 512];
    let mut index = first;
    for chunk in out.chunks_mut(2 * bf.len()) {
        let n = chunk.len() / 4;
        rng::fill_normal_bf16(key, index, &mut bf[..2 * n]);
        for (dst, src) in chunk.chunks_exact_mut(4).zip(bf.chunks_exact(2)) {
            let bits = u16::from_le_bytes([src[0], src[1]]);
            dst.copy_from_slice(&(u32::from(bits) << 16).to_le_bytes());
        }
        index += n as u64;
    }
}

/// Elements `first..` of the row-permuted tensor (see [`Fill::PermutedBf16`]): each output row
/// is a whole row of the source, so the generator is asked for row pieces.
fn fill_permuted_bf16(key: u64, cols: u64, head_rows: u64, first: u64, out: &mut [u8]) {
    let mut index = first;
    let mut out = out;
    while !out.is_empty() {
        let (row, col) = (index / cols, index % cols);
        let n = ((cols - col) as usize * 2).min(out.len());
        let src_row = crate::gguf::permuted_source_row(row, head_rows);
        let (head, tail) = std::mem::take(&mut out).split_at_mut(n);
        rng::fill_normal_bf16(key, src_row * cols + col, head);
        out = tail;
        index += n as u64 / 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ForgeSpec, Preset};

    #[test]
    fn direct_and_buffered_writes_give_the_same_files() {
        // Shards of a few hundred kB to a few MB: many 64 kB buffers each, the header inside the
        // first one, and a last buffer that is not a whole number of blocks.
        let mut spec = ForgeSpec::preset(Preset::Tiny);
        spec.shard_size = 1_000_000;
        spec.seed = 5;
        let plan = spec.plan().unwrap();
        assert!(plan.shards.len() > 1, "{} shards", plan.shards.len());
        let dir = tempfile::tempdir().unwrap();
        let (direct, buffered) = (dir.path().join("direct"), dir.path().join("buffered"));
        fs::create_dir(&direct).unwrap();
        fs::create_dir(&buffered).unwrap();
        for shard in &plan.shards {
            let mut reported = 0;
            let a = write_shard_with(&direct, shard, spec.seed, true, &mut |n| reported += n);
            let b = write_shard_with(&buffered, shard, spec.seed, false, &mut |_| {});
            assert_eq!(a.unwrap(), shard.file_bytes());
            assert_eq!(b.unwrap(), shard.file_bytes());
            assert_eq!(reported, shard.file_bytes());
            let a = fs::read(direct.join(&shard.file_name)).unwrap();
            let b = fs::read(buffered.join(&shard.file_name)).unwrap();
            assert!(a == b, "{} differs", shard.file_name);
            assert!(a.starts_with(&shard.prefix));
        }
        let left: Vec<_> = fs::read_dir(&direct).unwrap().collect();
        assert_eq!(left.len(), plan.shards.len(), "no .partial files left");
    }
}
