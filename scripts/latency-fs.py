#!/usr/bin/env python3
"""A read-only FUSE passthrough that makes every file operation pay a latency, the way a network
file system (a NAS) does: the NAS story of scripts/bench-nas.sh, on one machine.

    latency-fs.py SRC MOUNTPOINT [--latency-ms 1.5] [--cache direct|per-open] [--max-threads 64] [--max-seconds S]
                  [--stats FILE]

Each getattr (lookup and stat), open and read sleeps --latency-ms before it is served from SRC.
The kernel caches nothing across operations, so every operation pays: entry, attribute and
negative timeouts are 0 (each path lookup and stat reaches this program), and with --cache
direct (the default) every file is opened with direct_io: no page cache for the mounted files,
a read of a file read a moment ago reaches this program again, in requests of at most 1 MiB
(the kernel's FUSE limit). libfuse 3.14 cannot allow shared memory maps of direct_io files
(mmap fails with ENODEV), and shardpack's reader maps its shards: --cache per-open serves
those, with the page cache dropped at every open (keep_cache 0) and O_DIRECT reads (the
loader's) going to this program all the same. The files under SRC themselves may sit in SRC's
page cache: what is measured is the latency, as on a NAS whose server has the data in RAM.
readdir, release and statfs pay nothing.

It runs in the foreground and stays mounted until SIGTERM/SIGINT (libfuse unmounts), its stdin
reaches end of file (when it is a pipe), or --max-seconds pass (default 1800). The caller should still run
`fusermount3 -u -z MOUNTPOINT` in its exit trap in case this process was killed hard. With
--stats FILE it writes the operation counts as JSON there when it stops, and prints them to
stderr.

Needs libfuse3 (fusermount3 from Debian's fuse3) and mfusepy (scripts/requirements-remote.txt).
"""

import argparse
import errno
import json
import os
import select
import signal
import stat
import sys
import threading
import time

try:
    import mfusepy as fuse
except ImportError:
    raise SystemExit("latency-fs: mfusepy is missing: pip install mfusepy==3.1.1 (scripts/requirements-remote.txt)")


class LatencyFs(fuse.Operations):
    use_ns = True

    def __init__(self, root, latency_s, direct_io):
        self.root = os.path.realpath(root)
        self.latency = latency_s
        self.direct_io = direct_io
        self._mu = threading.Lock()
        self.mounted = False
        self.counts = {"getattr": 0, "open": 0, "read": 0, "read_bytes": 0}

    def _pay(self, op, n=0):
        with self._mu:
            self.counts[op] += 1
            if n:
                self.counts["read_bytes"] += n
        if self.latency > 0:
            time.sleep(self.latency)

    def _full(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def init_with_config(self, conn_info, config_3):
        self.mounted = True
        if config_3 is not None:
            config_3.entry_timeout = 0.0
            config_3.negative_timeout = 0.0
            config_3.attr_timeout = 0.0
            config_3.direct_io = 1 if self.direct_io else 0
            config_3.kernel_cache = 0
            config_3.auto_cache = 0

    def getattr(self, path, fh=None):
        self._pay("getattr")
        try:
            st = os.lstat(self._full(path))
        except OSError as e:
            raise fuse.FuseOSError(e.errno)
        d = {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino")}
        for k in ("st_atime", "st_mtime", "st_ctime"):
            d[k] = getattr(st, k + "_ns") if self.use_ns else getattr(st, k)
        return d

    def readdir(self, path, fh):
        try:
            return [".", ".."] + os.listdir(self._full(path))
        except OSError as e:
            raise fuse.FuseOSError(e.errno)

    def readlink(self, path):
        return os.readlink(self._full(path))

    def open(self, path, fi):
        self._pay("open")
        if fi.flags & (os.O_WRONLY | os.O_RDWR):
            raise fuse.FuseOSError(errno.EROFS)
        try:
            fi.fh = os.open(self._full(path), os.O_RDONLY)
        except OSError as e:
            raise fuse.FuseOSError(e.errno)
        # direct_io: no page cache for this file, every read() reaches us. Without it, the pages
        # a previous open cached are dropped at this open (keep_cache 0), and O_DIRECT reads
        # reach us all the same.
        fi.direct_io = 1 if self.direct_io else 0
        fi.keep_cache = 0
        return 0

    def read(self, path, size, offset, fi):
        data = os.pread(fi.fh, size, offset)
        self._pay("read", len(data))
        return data

    def release(self, path, fi):
        os.close(fi.fh)
        return 0

    def statfs(self, path):
        st = os.statvfs(self.root)
        return {k: getattr(st, k) for k in (
            "f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail",
            "f_flag", "f_namemax")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("mountpoint")
    ap.add_argument("--latency-ms", type=float, default=1.5, help="added to every getattr, open and read")
    ap.add_argument("--cache", choices=["direct", "per-open"], default="direct",
                    help="direct: direct_io on every file (no page cache; a shared memory map of a "
                    "file then fails with ENODEV under libfuse 3.14); per-open: the page cache "
                    "serves reads within one open only and is dropped at each open, so memory "
                    "maps work (O_DIRECT reads still reach this program)")
    ap.add_argument("--max-threads", type=int, default=64, help="libfuse worker threads (its default is 10)")
    ap.add_argument("--max-seconds", type=float, default=1800.0)
    ap.add_argument("--stats", help="write the operation counts here (JSON) when unmounted")
    a = ap.parse_args()
    if not os.path.isdir(a.src):
        raise SystemExit(f"latency-fs: {a.src} is not a directory")
    ops = LatencyFs(a.src, a.latency_ms / 1000.0, a.cache == "direct")

    try:
        watch_stdin = stat.S_ISFIFO(os.fstat(sys.stdin.fileno()).st_mode)
    except (OSError, ValueError):
        watch_stdin = False

    def stop_later():
        deadline = time.monotonic() + a.max_seconds
        try:
            while time.monotonic() < deadline:
                # stdin at EOF (the bench that started us ended) or max-seconds: unmount.
                if watch_stdin:
                    r, _, _ = select.select([sys.stdin], [], [], 0.5)
                    if r and not os.read(sys.stdin.fileno(), 4096):
                        break
                else:
                    time.sleep(0.5)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # libfuse's handler: leave the loop, unmount

    threading.Thread(target=stop_later, daemon=True).start()
    try:
        fuse.FUSE(ops, a.mountpoint, raw_fi=True, foreground=True, ro=True,
                  fsname="latency-fs", max_threads=a.max_threads)
    except RuntimeError as e:
        # fuse_main returns non-zero when a signal ended the loop (ours included); that is
        # the normal way out once mounted. Before mounting it is a real failure.
        if not ops.mounted:
            raise SystemExit(f"latency-fs: could not mount {a.mountpoint}: fuse_main returned {e}")
    finally:
        line = json.dumps({"latency_ms": a.latency_ms, **ops.counts})
        print(f"latency-fs: {line}", file=sys.stderr, flush=True)
        if a.stats:
            with open(a.stats, "w") as f:
                f.write(line + "\n")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the stdin watcher thread may still be blocked
