//! SHA-256 of each file while the torrent is still downloading.
//!
//! librqbit tells the storage layer when a piece passed its SHA-1 check; [`NotifyingStorage`]
//! forwards that to a [`FileHasher`] thread, which feeds each file's bytes to its SHA-256 in
//! order as soon as the pieces under them are complete. Bytes are read right after they were
//! written (from the page cache), so a file's final hash is ready the moment its last piece
//! lands, while other files still download, and there is no second full pass at the end.
//!
//! Once a file is hashed, its pages are written back and dropped from the page cache
//! ([`release_page_cache`]). librqbit writes 16 KiB blocks, so the page cache holds a fetched
//! file in 4–8 KiB folios, which the kernel maps with 4 KiB pages however the engine advises its
//! maps; dropped, the file is read back by its first `swarmlm run` in 2 MiB folios, which decode
//! maps with 2 MiB pages (BENCHMARKS.md, issue 9: "fetched files and the page cache").

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};

use librqbit::storage::{
    filesystem::FilesystemStorageFactory, BoxStorageFactory, StorageFactory, StorageFactoryExt,
    TorrentStorage,
};
use librqbit::{ManagedTorrentShared, TorrentMetadata};
use librqbit_core::lengths::ValidPieceIndex;
use sha2::{Digest, Sha256};

/// Wraps librqbit's filesystem storage and reports every piece that passed its hash check.
#[derive(Clone)]
pub struct NotifyingStorageFactory {
    tx: Sender<u32>,
}

impl NotifyingStorageFactory {
    pub fn new(tx: Sender<u32>) -> Self {
        NotifyingStorageFactory { tx }
    }
}

impl StorageFactory for NotifyingStorageFactory {
    type Storage = NotifyingStorage;

    fn create(
        &self,
        shared: &ManagedTorrentShared,
        metadata: &TorrentMetadata,
    ) -> anyhow::Result<Self::Storage> {
        Ok(NotifyingStorage {
            inner: Box::new(FilesystemStorageFactory::default().create(shared, metadata)?),
            tx: self.tx.clone(),
        })
    }

    // Forwarded so librqbit still recognises the filesystem storage underneath.
    fn is_type_id(&self, type_id: std::any::TypeId) -> bool {
        FilesystemStorageFactory::default().is_type_id(type_id)
    }

    fn clone_box(&self) -> BoxStorageFactory {
        self.clone().boxed()
    }
}

/// librqbit's filesystem storage plus a piece-completed notification.
pub struct NotifyingStorage {
    inner: Box<dyn TorrentStorage>,
    tx: Sender<u32>,
}

impl TorrentStorage for NotifyingStorage {
    fn init(
        &mut self,
        shared: &ManagedTorrentShared,
        metadata: &TorrentMetadata,
    ) -> anyhow::Result<()> {
        self.inner.init(shared, metadata)
    }

    fn pread_exact(&self, file_id: usize, offset: u64, buf: &mut [u8]) -> anyhow::Result<()> {
        self.inner.pread_exact(file_id, offset, buf)
    }

    fn pwrite_all(&self, file_id: usize, offset: u64, buf: &[u8]) -> anyhow::Result<()> {
        self.inner.pwrite_all(file_id, offset, buf)
    }

    fn pwrite_all_vectored(
        &self,
        file_id: usize,
        offset: u64,
        bufs: [std::io::IoSlice<'_>; 2],
    ) -> anyhow::Result<usize> {
        self.inner.pwrite_all_vectored(file_id, offset, bufs)
    }

    fn remove_file(&self, file_id: usize, filename: &std::path::Path) -> anyhow::Result<()> {
        self.inner.remove_file(file_id, filename)
    }

    fn remove_directory_if_empty(&self, path: &std::path::Path) -> anyhow::Result<()> {
        self.inner.remove_directory_if_empty(path)
    }

    fn ensure_file_length(&self, file_id: usize, length: u64) -> anyhow::Result<()> {
        self.inner.ensure_file_length(file_id, length)
    }

    fn take(&self) -> anyhow::Result<Box<dyn TorrentStorage>> {
        Ok(Box::new(NotifyingStorage {
            inner: self.inner.take()?,
            tx: self.tx.clone(),
        }))
    }

    fn on_piece_completed(&self, piece_index: ValidPieceIndex) -> anyhow::Result<()> {
        // A closed receiver means the fetch is over; nothing left to tell.
        let _ = self.tx.send(piece_index.get());
        self.inner.on_piece_completed(piece_index)
    }
}

/// One file to hash: where its bytes sit in the torrent and on disk.
#[derive(Debug, Clone)]
pub struct HashJob {
    /// Index into the caller's file table.
    pub index: usize,
    pub partial_path: PathBuf,
    /// Byte offset of the file in the torrent's concatenated payload.
    pub offset: u64,
    pub len: u64,
}

/// What the hasher thread reports.
#[derive(Debug)]
pub enum HashResult {
    /// All bytes of the file were hashed.
    Done { index: usize, sha256: [u8; 32] },
    /// Reading the partial file failed.
    Failed {
        index: usize,
        path: PathBuf,
        error: std::io::Error,
    },
}

struct FileState {
    job: HashJob,
    hasher: Sha256,
    /// Bytes of the file hashed so far.
    cursor: u64,
    file: Option<File>,
    done: bool,
}

/// Piece-by-piece SHA-256 over the files of one torrent.
pub struct FileHasher {
    piece_length: u64,
    total_length: u64,
    have: Vec<bool>,
    files: Vec<FileState>,
    buf: Vec<u8>,
}

impl FileHasher {
    pub fn new(piece_length: u64, total_length: u64, jobs: Vec<HashJob>) -> Self {
        let pieces = total_length.div_ceil(piece_length.max(1)) as usize;
        FileHasher {
            piece_length: piece_length.max(1),
            total_length,
            have: vec![false; pieces],
            files: jobs
                .into_iter()
                .map(|job| FileState {
                    job,
                    hasher: Sha256::new(),
                    cursor: 0,
                    file: None,
                    done: false,
                })
                .collect(),
            buf: vec![0u8; 1 << 20],
        }
    }

    /// Marks a piece complete and hashes whatever became contiguous; returns finished files.
    pub fn piece_completed(&mut self, piece: u32) -> Vec<HashResult> {
        if let Some(h) = self.have.get_mut(piece as usize) {
            *h = true;
        }
        self.advance()
    }

    /// Hashes forward in every unfinished file as far as complete pieces allow.
    pub fn advance(&mut self) -> Vec<HashResult> {
        let mut out = Vec::new();
        for i in 0..self.files.len() {
            if self.files[i].done {
                continue;
            }
            match self.advance_file(i) {
                Ok(true) => {
                    let st = &mut self.files[i];
                    st.done = true;
                    // A write-back error means the disk does not hold what was hashed.
                    if let Err(error) = st.file.take().as_ref().map_or(Ok(()), release_page_cache) {
                        out.push(HashResult::Failed {
                            index: st.job.index,
                            path: st.job.partial_path.clone(),
                            error,
                        });
                        continue;
                    }
                    let sha: [u8; 32] = std::mem::take(&mut st.hasher).finalize().into();
                    out.push(HashResult::Done {
                        index: st.job.index,
                        sha256: sha,
                    });
                }
                Ok(false) => {}
                Err(error) => {
                    let st = &mut self.files[i];
                    st.done = true;
                    out.push(HashResult::Failed {
                        index: st.job.index,
                        path: st.job.partial_path.clone(),
                        error,
                    });
                }
            }
        }
        out
    }

    /// Whether every file has been reported.
    pub fn all_done(&self) -> bool {
        self.files.iter().all(|f| f.done)
    }

    fn advance_file(&mut self, i: usize) -> std::io::Result<bool> {
        let piece_length = self.piece_length;
        let total = self.total_length;
        loop {
            let st = &self.files[i];
            if st.cursor >= st.job.len {
                return Ok(true);
            }
            let abs = st.job.offset + st.cursor;
            let piece = (abs / piece_length) as usize;
            if !self.have.get(piece).copied().unwrap_or(false) {
                return Ok(false);
            }
            let piece_end = ((piece as u64 + 1) * piece_length).min(total);
            let file_end = st.job.offset + st.job.len;
            let end = piece_end.min(file_end);
            let mut pos = st.cursor;
            let stop = end - st.job.offset;
            let st = &mut self.files[i];
            if st.file.is_none() {
                st.file = Some(File::open(&st.job.partial_path)?);
            }
            let file = st.file.as_ref().expect("opened above");
            while pos < stop {
                let n = ((stop - pos) as usize).min(self.buf.len());
                file.read_exact_at(&mut self.buf[..n], pos)?;
                st.hasher.update(&self.buf[..n]);
                pos += n as u64;
            }
            st.cursor = pos;
        }
    }
}

/// Writes a completely hashed file back to disk (`fdatasync`; the kernel drops only clean
/// pages) and asks the kernel to evict it from the page cache (`POSIX_FADV_DONTNEED`, best
/// effort: pages another process maps, such as a seeding librqbit's reads in flight, stay).
/// The hash was taken before, so what is dropped was already verified; the next reader gets
/// the same bytes back from disk, in folios sized by its own access (2 MiB for the engine).
fn release_page_cache(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    file.sync_data()?;
    // SAFETY: plain syscall on a descriptor `file` keeps open; no memory is passed.
    let _ = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    Ok(())
}

/// Runs a [`FileHasher`] on its own thread: pieces in, finished files out. Ends when every
/// file is reported or the piece channel closes.
pub fn spawn_hasher(
    mut hasher: FileHasher,
    initial_pieces: Vec<u32>,
    pieces: Receiver<u32>,
    results: Sender<HashResult>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("swarmlm-sha256".into())
        .spawn(move || {
            for p in initial_pieces {
                if let Some(h) = hasher.have.get_mut(p as usize) {
                    *h = true;
                }
            }
            for r in hasher.advance() {
                if results.send(r).is_err() {
                    return;
                }
            }
            while !hasher.all_done() {
                let Ok(p) = pieces.recv() else { return };
                for r in hasher.piece_completed(p) {
                    if results.send(r).is_err() {
                        return;
                    }
                }
            }
        })
        .expect("spawning a thread only fails when the process is out of resources")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_files_across_piece_boundaries_in_any_piece_order() {
        let dir = tempfile::tempdir().unwrap();
        // Three files of awkward sizes in a 10-byte-piece torrent, one empty.
        let contents: Vec<Vec<u8>> = vec![(0..23u8).collect(), Vec::new(), (100..137u8).collect()];
        let mut jobs = Vec::new();
        let mut offset = 0;
        for (i, c) in contents.iter().enumerate() {
            let p = dir.path().join(format!("f{i}"));
            std::fs::write(&p, c).unwrap();
            jobs.push(HashJob {
                index: i,
                partial_path: p,
                offset,
                len: c.len() as u64,
            });
            offset += c.len() as u64;
        }
        let mut h = FileHasher::new(10, offset, jobs);
        let mut done = std::collections::BTreeMap::new();
        for r in h.advance() {
            if let HashResult::Done { index, sha256 } = r {
                done.insert(index, sha256);
            }
        }
        // Only the empty file is complete before any piece.
        assert_eq!(done.keys().copied().collect::<Vec<_>>(), vec![1]);
        for piece in [5u32, 2, 0, 4, 1, 3] {
            for r in h.piece_completed(piece) {
                match r {
                    HashResult::Done { index, sha256 } => {
                        done.insert(index, sha256);
                    }
                    HashResult::Failed { error, .. } => panic!("{error}"),
                }
            }
            if piece == 2 {
                // pieces 0..=2 cover bytes 0..30: file 0 (0..23) is complete once 0,1,2 are.
                assert!(!done.contains_key(&0));
            }
        }
        assert!(h.all_done());
        for (i, c) in contents.iter().enumerate() {
            let want: [u8; 32] = Sha256::digest(c).into();
            assert_eq!(done[&i], want, "file {i}");
        }
    }

    /// Pages of `path` in the page cache, out of its pages.
    fn cached_pages(path: &std::path::Path) -> (usize, usize) {
        use std::os::fd::AsRawFd;
        let f = File::open(path).unwrap();
        let len = f.metadata().unwrap().len() as usize;
        // SAFETY: a fresh read-only shared map of `len` > 0 bytes of an open file; only its
        // address is used (mincore), never its contents, and it is unmapped below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        let pages = len.div_ceil(4096);
        let mut vec = vec![0u8; pages];
        // SAFETY: `map` is a live map of `len` bytes and `vec` has a byte per 4 KiB page (the
        // page size on x86-64).
        let rc = unsafe { libc::mincore(map, len, vec.as_mut_ptr()) };
        // SAFETY: unmaps exactly the map created above, which nothing references any more.
        unsafe { libc::munmap(map, len) };
        assert_eq!(rc, 0);
        (vec.iter().filter(|&&b| b & 1 != 0).count(), pages)
    }

    #[test]
    fn a_hashed_file_is_written_back_and_left_out_of_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("weights");
        // Written in 16 KiB pieces, as librqbit does: dirty pages in small folios.
        let data: Vec<u8> = (0..8u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::create(&p).unwrap();
            for (i, block) in data.chunks(16 << 10).enumerate() {
                f.write_all_at(block, (i << 14) as u64).unwrap();
            }
        }
        let (before, pages) = cached_pages(&p);
        assert_eq!(before, pages, "a file just written is cached");
        let job = HashJob {
            index: 0,
            partial_path: p.clone(),
            offset: 0,
            len: data.len() as u64,
        };
        let mut h = FileHasher::new(1 << 20, data.len() as u64, vec![job]);
        let mut results = Vec::new();
        for piece in 0..8 {
            results.extend(h.piece_completed(piece));
        }
        let want: [u8; 32] = Sha256::digest(&data).into();
        assert!(
            matches!(results.as_slice(), [HashResult::Done { index: 0, sha256 }] if *sha256 == want),
            "{results:?}"
        );
        let (after, _) = cached_pages(&p);
        assert_eq!(
            after, 0,
            "{after} of {pages} pages still cached after the hash"
        );
        assert_eq!(
            std::fs::read(&p).unwrap(),
            data,
            "the bytes on disk are the hashed ones"
        );
    }
}
