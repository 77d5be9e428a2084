#!/usr/bin/env python3
# Folio sizes of files in the page cache: which share a huge (2 MiB, PMD) mapping can use.
# Needs root (/proc/kpageflags). Maps each file read-only and touches only the pages mincore
# reports cached, so it never reads anything in or changes the folios it measures.
#   sudo benchmarks/page_cache_folios.py MODEL/*.safetensors
import ctypes, os, struct, sys, collections
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
PG = 4096
def hist(path):
    fd = os.open(path, os.O_RDONLY); size = os.fstat(fd).st_size
    n = (size + PG - 1) // PG
    a = libc.mmap(None, size, 1, 1, fd, 0)
    libc.madvise(a, size, 15)  # MADV_NOHUGEPAGE: only map, never allocate differently
    vec = (ctypes.c_ubyte * n)()
    assert libc.mincore(a, size, vec) == 0
    res = [i for i in range(n) if vec[i] & 1]
    for i in res:
        ctypes.c_ubyte.from_address(a + i * PG).value
    pm = open('/proc/self/pagemap', 'rb'); kf = open('/proc/kpageflags', 'rb')
    pm.seek(a // PG * 8); ents = struct.unpack(f'{n}Q', pm.read(8 * n))
    sizes = collections.Counter(); i = 0
    while i < n:
        e = ents[i]
        if not (e >> 63) & 1: i += 1; continue
        pfn = e & ((1 << 55) - 1)
        kf.seek(pfn * 8); fl = struct.unpack('Q', kf.read(8))[0]
        if (fl >> 15) & 1:  # compound head: count tails
            j = i + 1
            while j < n and (ents[j] >> 63) & 1 and (ents[j] & ((1 << 55) - 1)) == pfn + (j - i):
                kf.seek((pfn + j - i) * 8)
                if not (struct.unpack('Q', kf.read(8))[0] >> 16) & 1: break
                j += 1
            sizes[(j - i) * 4] += (j - i) * PG; i = j
        else:
            sizes[4] += PG; i += 1
    tot = sum(sizes.values())
    desc = ', '.join(f'{k}K:{v/1e6:.0f}MB' for k, v in sorted(sizes.items()))
    print(f'{os.path.basename(path)}: size {size/1e6:.0f} MB, cached {len(res)*PG/1e6:.0f} MB, mapped {tot/1e6:.0f} MB; in 2 MiB folios {sizes.get(2048,0)/max(tot,1)*100:.0f}% [{desc}]')
for p in sys.argv[1:]: hist(p)
