#!/usr/bin/env python3
"""How should the expert pager's I/O thread read one expert into the page cache?

    sudo python3 benchmarks/pager_io.py FILE [EXPERT_MB] [ROUNDS]

Reads EXPERT_MB (default 352, one Mixtral 8x7B expert) ranges of FILE with the file opened the
way the pager opens it (POSIX_FADV_RANDOM: a pread reads exactly its bytes, no readahead),
after dropping the range from the page cache, in several ways: one pread of 1 MiB or 4 MiB
at a time (queue depth 1), several threads taking the next chunk (queue depth = threads), and
POSIX_FADV_WILLNEED (kernel readahead) ahead of the reads. Prints MB/s for each, best of
ROUNDS, next to `dd iflag=direct bs=16M` over the same bytes. Each way reads a different range
so no read is served from a cache.
"""
import os
import subprocess
import sys
import threading
import time

path = sys.argv[1]
size = int(sys.argv[2] if len(sys.argv) > 2 else 352) << 20
rounds = int(sys.argv[3] if len(sys.argv) > 3 else 2)
fd = os.open(path, os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
file_size = os.fstat(fd).st_size


def threads(off, n, chunk):
    nxt = [off]
    lock = threading.Lock()

    def work():
        while True:
            with lock:
                at = nxt[0]
                nxt[0] += chunk
            if at >= off + size:
                return
            os.pread(fd, min(chunk, off + size - at), at)

    ts = [threading.Thread(target=work) for _ in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def willneed(off, chunk, window):
    # Keep `window` bytes of kernel readahead queued ahead of the reads.
    ahead = off
    at = off
    while at < off + size:
        while ahead < min(at + window, off + size):
            os.posix_fadvise(fd, ahead, 8 << 20, os.POSIX_FADV_WILLNEED)
            ahead += 8 << 20
        at += len(os.pread(fd, chunk, at))


def dd(off):
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=16M", f"skip={off}",
                    f"count={size >> 24}", "iflag=direct,skip_bytes", "status=none"], check=True)


ways = [
    ("dd iflag=direct bs=16M", dd),
    ("pread 1 MiB, depth 1", lambda o: threads(o, 1, 1 << 20)),
    ("pread 4 MiB, depth 1", lambda o: threads(o, 1, 4 << 20)),
    ("4 threads x 1 MiB", lambda o: threads(o, 4, 1 << 20)),
    ("4 threads x 4 MiB", lambda o: threads(o, 4, 4 << 20)),
    ("8 threads x 4 MiB", lambda o: threads(o, 8, 4 << 20)),
    ("4 threads x 16 MiB", lambda o: threads(o, 4, 16 << 20)),
    ("8 threads x 8 MiB", lambda o: threads(o, 8, 8 << 20)),
    ("WILLNEED 32 MiB ahead + pread 4 MiB", lambda o: willneed(o, 4 << 20, 32 << 20)),
    ("WILLNEED 64 MiB ahead + pread 4 MiB", lambda o: willneed(o, 4 << 20, 64 << 20)),
]
slots = file_size // size
assert slots >= len(ways) * rounds, f"{path} holds {slots} ranges of {size} bytes, need {len(ways) * rounds}"
k = 0
for name, fn in ways:
    best = 0.0
    for _ in range(rounds):
        off = k * size
        k += 1
        os.posix_fadvise(fd, off, size, os.POSIX_FADV_DONTNEED)
        t = time.perf_counter()
        fn(off)
        best = max(best, size / (time.perf_counter() - t) / 1e6)
        os.posix_fadvise(fd, off, size, os.POSIX_FADV_DONTNEED)
    print(f"{name:<38} {best:7.0f} MB/s", flush=True)
