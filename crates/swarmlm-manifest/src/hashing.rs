//! Hashing whole files, and spreading many files over the cores.
//!
//! Verification is I/O + SHA-256 bound; with SHA-NI one core hashes ~2 GB/s, so the win is to keep
//! every core busy: files are handed to worker threads largest first, and a file that also needs
//! an md5 (a Mistral release) gets a second thread for the md5 so the two digests run side by side.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;

use md5::Digest as _;

const CHUNK: usize = 1 << 20;
/// Buffers in flight between the reader (SHA-256) and the md5 thread.
const MD5_BUFFERS: usize = 4;

/// What one pass over a file produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digests {
    pub size: u64,
    pub sha256: [u8; 32],
    pub md5: Option<[u8; 16]>,
}

/// SHA-256 (and md5 when asked) of a file in one read pass. `progress` gets byte counts as they
/// are read.
pub fn hash_file(path: &Path, want_md5: bool, progress: &dyn Fn(u64)) -> std::io::Result<Digests> {
    let mut file = std::fs::File::open(path)?;
    let mut sha = sha2::Sha256::new();
    let mut size = 0u64;
    if !want_md5 {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = read_full(&mut file, &mut buf)?;
            if n == 0 {
                break;
            }
            sha.update(&buf[..n]);
            size += n as u64;
            progress(n as u64);
        }
        return Ok(Digests {
            size,
            sha256: sha.finalize().into(),
            md5: None,
        });
    }
    std::thread::scope(|s| {
        let (to_md5, md5_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(MD5_BUFFERS);
        let (back_tx, back_rx) = mpsc::channel::<Vec<u8>>();
        let md5_thread = s.spawn(move || {
            let mut md5 = md5::Md5::new();
            for (buf, n) in md5_rx {
                md5.update(&buf[..n]);
                // The reader may already be gone after its last chunk; nothing to recycle then.
                let _ = back_tx.send(buf);
            }
            <[u8; 16]>::from(md5.finalize())
        });
        let mut allocated = 0;
        let result = (|| -> std::io::Result<()> {
            loop {
                let mut buf = match back_rx.try_recv() {
                    Ok(b) => b,
                    Err(_) if allocated < MD5_BUFFERS => {
                        allocated += 1;
                        vec![0u8; CHUNK]
                    }
                    Err(_) => back_rx
                        .recv()
                        .map_err(|_| std::io::Error::other("md5 thread stopped"))?,
                };
                let n = read_full(&mut file, &mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                sha.update(&buf[..n]);
                size += n as u64;
                progress(n as u64);
                to_md5
                    .send((buf, n))
                    .map_err(|_| std::io::Error::other("md5 thread stopped"))?;
            }
        })();
        drop(to_md5);
        let md5 = md5_thread
            .join()
            .map_err(|_| std::io::Error::other("md5 thread panicked"))?;
        result?;
        Ok(Digests {
            size,
            sha256: sha.finalize().into(),
            md5: Some(md5),
        })
    })
}

/// Fills `buf` as far as the file allows (retrying short and interrupted reads); 0 only at end
/// of file. Shared with torrent creation, which hashes the same way.
pub fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Number of hashing threads to use when the caller says 0: one per core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Run `work` on every job with up to `threads` threads, jobs taken in the given order (callers
/// put the largest first so the last file does not run alone). Results come back in job order.
pub fn run_parallel<J: Sync, R: Send>(
    jobs: &[J],
    threads: usize,
    work: impl Fn(&J) -> R + Sync,
) -> Vec<R> {
    let threads = threads.max(1).min(jobs.len().max(1));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..jobs.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { break };
                let r = work(job);
                results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .map(|r| r.expect("every job index below len is taken by exactly one worker"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_known_values_with_and_without_md5() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc");
        std::fs::write(&p, b"abc").unwrap();
        let d = hash_file(&p, true, &|_| {}).unwrap();
        assert_eq!(d.size, 3);
        assert_eq!(
            hex::encode(d.sha256),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex::encode(d.md5.unwrap()),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        let d2 = hash_file(&p, false, &|_| {}).unwrap();
        assert_eq!((d2.sha256, d2.md5), (d.sha256, None));
    }

    #[test]
    fn multi_chunk_file_hashes_like_one_update() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        let data: Vec<u8> = (0..(CHUNK * 5 + 12345))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        std::fs::write(&p, &data).unwrap();
        let seen = AtomicUsize::new(0);
        let d = hash_file(&p, true, &|n| {
            seen.fetch_add(n as usize, Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(seen.load(Ordering::Relaxed), data.len());
        assert_eq!(d.sha256, <[u8; 32]>::from(sha2::Sha256::digest(&data)));
        assert_eq!(d.md5.unwrap(), <[u8; 16]>::from(md5::Md5::digest(&data)));
    }

    #[test]
    fn run_parallel_keeps_job_order() {
        let jobs: Vec<u64> = (0..100).collect();
        let out = run_parallel(&jobs, 3, |j| j * 2);
        assert_eq!(out, jobs.iter().map(|j| j * 2).collect::<Vec<_>>());
    }
}
