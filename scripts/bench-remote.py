#!/usr/bin/env python3
"""The remote bench: a dataset and its loose source tree on loopback servers behind a link with
a latency and a bandwidth cap (scripts/faultproxy.py), read as loose objects (one GET per sample,
32 in flight: what a file-per-sample loader costs on object storage) and by shardpack.

    scripts/bench-remote.py [--files 10000] [--kib 16] [--latency-ms 20] [--bandwidth-mbps 1600]
                            [--inflight 32] [--batch 256] [--step-ms MS] [--store http|s3|both]
                            [--open-shards 1000] [--chunk-size 8MiB] [--loader-threads N]
                            [--work DIR] [--json]

Steps, each printed as it ends:
  1. writes an image-like tree (scripts/gen-tree.py: --files incompressible files of about --kib
     KiB, fixed seed) and packs it (`shardpack pack`), once per size (kept in --work DIR);
  2. serves both with nginx (scripts/testsrv.py http) and/or moto (testsrv.py s3; the objects are
     uploaded with boto3), each behind faultproxy.py --latency-ms L --bandwidth-mbps N;
  3. the link: the shard files read with ranged GETs of 8 MiB, 8 in flight (what the capped link
     carries at best), in MB/s;
  4. the baseline: every loose file fetched in a random order, one GET per sample, --inflight
     GETs in flight on kept-alive connections, in samples/s and MB/s; with --step-ms, a simulated
     trainer (a sleep per batch of --batch) fed by it, and its busy fraction;
  5. shardpack: `shardpack bench URL --json` (with --step-ms, its trainer too) in stream mode (the
     loader's every byte crosses the link: its MB/s is compared with the link's) and in cache mode
     from an empty cache (the whole run's time and requests, downloads included), each with a
     cache directory of its own; run only when the binary opens URLs; otherwise it prints
     "skipped: this shardpack cannot open URLs";
  6. the open of a remote dataset of --open-shards shards (tiny samples, 4 per shard):
     `shardpack info URL` in both modes, with the requests the proxy counted and the time; then
     `shardpack verify URL` of it in cache mode from an empty cache (every shard downloaded).

The proxy's request counter gives each phase's request count. Over S3 the shardpack side gets
AWS_ENDPOINT_URL (the proxy), AWS_ALLOW_HTTP=true and test credentials in its environment.
Servers bind to 127.0.0.1 and stop with this script. Needs nginx and the venv of
scripts/remote-env.sh (moto, boto3); the shardpack binary is $SHARDPACK_BIN, else
target/release/shardpack, else target/debug/shardpack.
"""

import argparse
import concurrent.futures as cf
import http.client
import json
import os
import queue
import random
import subprocess
import sys
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def log(msg):
    print(f"bench-remote: {msg}", file=sys.stderr, flush=True)


def find_bin():
    b = os.environ.get("SHARDPACK_BIN")
    if b:
        return b
    for p in ("target/release/shardpack", "target/debug/shardpack"):
        p = os.path.join(REPO, p)
        if os.access(p, os.X_OK):
            return p
    raise SystemExit("bench-remote: no shardpack binary: cargo build --release -p shardpack-cli")


class Server:
    """A scripts/testsrv.py or faultproxy.py process, stopped by closing its stdin."""

    def __init__(self, argv, python=sys.executable):
        self.p = subprocess.Popen([python, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = self.p.stdout.readline()
        if not line:
            raise SystemExit(f"bench-remote: {' '.join(argv[:2])} did not start")
        self.url = json.loads(line)["url"]
        u = urllib.parse.urlsplit(self.url)
        self.host, self.port = u.hostname, u.port

    def control(self, what):
        c = http.client.HTTPConnection(self.host, self.port, timeout=30)
        c.request("GET", f"/__proxy__/{what}")
        return json.loads(c.getresponse().read())

    def stop(self):
        try:
            self.p.stdin.close()
            self.p.wait(timeout=15)
        except (OSError, subprocess.TimeoutExpired):
            self.p.kill()
            self.p.wait()


class Fetcher:
    """GETs on one kept-alive connection per thread."""

    def __init__(self, host, port):
        self.host, self.port = host, port
        self.local = threading.local()

    def get(self, path, headers=None):
        c = getattr(self.local, "c", None)
        for attempt in (0, 1):
            if c is None:
                c = http.client.HTTPConnection(self.host, self.port, timeout=120)
                self.local.c = c
            try:
                c.request("GET", path, headers=headers or {})
                r = c.getresponse()
                body = r.read()
                if r.status not in (200, 206):
                    raise SystemExit(f"bench-remote: GET {path}: HTTP {r.status}")
                return body
            except (http.client.HTTPException, OSError):
                c.close()
                c = self.local.c = None
                if attempt:
                    raise


def link_rate(fetch, objects, block=8 << 20, inflight=8):
    """objects: [(path, size)]; every byte read with ranged GETs of `block`, `inflight` at once."""
    ranges = [(p, off, min(size, off + block) - 1) for p, size in objects for off in range(0, size, block)]
    t = time.monotonic()
    with cf.ThreadPoolExecutor(inflight) as ex:
        n = sum(ex.map(lambda r: len(fetch.get(r[0], {"Range": f"bytes={r[1]}-{r[2]}"})), ranges))
    s = time.monotonic() - t
    return {"mb_s": n / 1e6 / s, "bytes": n, "seconds": s, "requests": len(ranges)}


def baseline(fetch, paths, inflight, seed, batch=None, step_ms=None):
    """Every path fetched once in a random order, `inflight` GETs at once; with step_ms, a
    trainer that sleeps step_ms per batch of `batch` samples, fed in arrival order."""
    order = list(paths)
    random.Random(seed).shuffle(order)
    q = queue.Queue(maxsize=max(4 * (batch or 1), 4 * inflight))
    nbytes = [0]
    lock = threading.Lock()
    it = iter(order)

    def worker():
        while True:
            with lock:
                p = next(it, None)
            if p is None:
                return
            n = len(fetch.get(p))
            with lock:
                nbytes[0] += n
            q.put(n)

    t = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(inflight)]
    for th in threads:
        th.start()
    busy = 0.0
    wait = 0.0
    got = 0
    in_batch = 0
    w0 = time.monotonic()
    while got < len(order):
        q.get()
        got += 1
        in_batch += 1
        if step_ms and (in_batch == batch or got == len(order)):
            wait += time.monotonic() - w0
            s0 = time.monotonic()
            time.sleep(step_ms / 1000.0)
            busy += time.monotonic() - s0
            in_batch = 0
            w0 = time.monotonic()
    for th in threads:
        th.join()
    s = time.monotonic() - t
    out = {"samples_s": len(order) / s, "mb_s": nbytes[0] / 1e6 / s, "seconds": s, "samples": len(order)}
    if step_ms:
        out.update({"trainer_busy": busy / s, "trainer_wait_s": wait})
    return out


def run(cmd, env=None):
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def make_data(a, bin_, work):
    tag = f"{a.files}-{a.kib}"
    www = os.path.join(work, f"www-{tag}")
    if not os.path.exists(os.path.join(www, ".complete")):
        subprocess.run(["rm", "-rf", www], check=True)
        os.makedirs(www)
        t = time.monotonic()
        subprocess.run([sys.executable, os.path.join(HERE, "gen-tree.py"), os.path.join(www, "tree"),
                        "--files", str(a.files), "--classes", "10", "--mean-kib", str(a.kib)],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run([bin_, "pack", os.path.join(www, "tree"), os.path.join(www, "ds"), "--quiet"], check=True)
        # The open bench: a dataset of --open-shards shards of 4 tiny samples each.
        small = os.path.join(www, "small-tree")
        for i in range(a.open_shards * 4):
            d = os.path.join(small, f"c{i % 10}")
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, f"{i:06d}.bin"), "wb") as f:
                f.write(random.Random(i).randbytes(200))
        subprocess.run([bin_, "pack", small, os.path.join(www, "ds-open"), "--quiet",
                        "--max-samples-per-shard", "4"], check=True)
        subprocess.run(["rm", "-rf", small], check=True)
        open(os.path.join(www, ".complete"), "w").close()
        log(f"tree written and packed in {time.monotonic() - t:.0f} s")
    return www


def files_under(root, rel):
    out = []
    for d, _, names in os.walk(os.path.join(root, rel)):
        for n in names:
            p = os.path.join(d, n)
            out.append((os.path.relpath(p, root), os.path.getsize(p)))
    return sorted(out)


def upload_s3(venv_python, url, bucket, www):
    code = r"""
import sys, os, boto3, concurrent.futures as cf
url, bucket, root = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=url, aws_access_key_id="test", aws_secret_access_key="test",
                  region_name="us-east-1")
keys = []
for d, _, names in os.walk(root):
    for n in names:
        if n != ".complete":
            keys.append(os.path.relpath(os.path.join(d, n), root))
with cf.ThreadPoolExecutor(16) as ex:
    list(ex.map(lambda k: s3.upload_file(os.path.join(root, k), bucket, k), keys))
print(len(keys))
"""
    r = subprocess.run([venv_python, "-c", code, url, bucket, www], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"bench-remote: upload to moto failed: {r.stderr.strip()[-2000:]}")
    return int(r.stdout)


def presign(venv_python, url, bucket, paths):
    """Presigned GET paths (path + query, signed for the proxy's host) for S3 keys: moto refuses
    anonymous GETs; a presigned URL is still one plain GET per object."""
    code = r"""
import sys, json, boto3, urllib.parse
url, bucket = sys.argv[1:3]
s3 = boto3.client("s3", endpoint_url=url, aws_access_key_id="test", aws_secret_access_key="test",
                  region_name="us-east-1")
out = []
for key in json.load(sys.stdin):
    u = urllib.parse.urlsplit(s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                                        ExpiresIn=7200))
    out.append(u.path + "?" + u.query)
json.dump(out, sys.stdout)
"""
    r = subprocess.run([venv_python, "-c", code, url, bucket], input=json.dumps(paths), capture_output=True,
                       text=True)
    if r.returncode:
        raise SystemExit(f"bench-remote: presigning failed: {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout)


def shardpack_side(a, bin_, url, proxy, env, report, label):
    """`shardpack bench URL` in stream and in cache mode, and the open of the 1,000-shard dataset,
    or 'skipped'.

    Every shardpack command gets a cache directory of its own, created empty, so no phase reads
    what an earlier one downloaded: in cache mode the shard downloads are inside the measured run
    (the bench's own loader phase then reads the local copy, so its MB/s is the cache's: the
    figure for the link is the whole run's time), and in stream mode every byte the loader reads
    crosses the link (its loader MB/s is the one to compare with the link's)."""
    import shutil
    import tempfile

    def fresh_env(mode):
        e = dict(env)
        e["SHARDPACK_REMOTE_MODE"] = mode
        e["SHARDPACK_CACHE_DIR"] = tempfile.mkdtemp(prefix="cache-", dir=a.work)
        return e

    def drop(e):
        shutil.rmtree(e["SHARDPACK_CACHE_DIR"], ignore_errors=True)

    e = fresh_env("stream")
    probe = run([bin_, "info", url + "/ds"], env=e)
    drop(e)
    if probe.returncode != 0:
        why = (probe.stderr.strip().splitlines() or ["?"])[-1]
        msg = f"skipped: this shardpack cannot open URLs ({why})"
        log(f"{label}: shardpack: {msg}")
        report["shardpack"] = msg
        report["open"] = msg
        return
    cmd = [bin_, "bench", url + "/ds", "--json", "--batch", str(a.batch)]
    if a.step_ms:
        cmd += ["--step-ms", str(a.step_ms)]
    if a.chunk_size:
        cmd += ["--chunk-size", a.chunk_size]
    if a.loader_threads:
        cmd += ["--loader-threads", str(a.loader_threads)]
    for mode in ("stream", "cache"):
        key = "shardpack" if mode == "stream" else "shardpack_cache"
        e = fresh_env(mode)
        proxy.control("reset")
        t = time.monotonic()
        r = run(cmd, env=e)
        took = time.monotonic() - t
        drop(e)
        if r.returncode:
            report[key] = f"failed: {r.stderr.strip()[-1000:]}"
            log(f"{label}: shardpack bench ({mode} mode) failed: {r.stderr.strip()[-1000:]}")
            continue
        v = json.loads(r.stdout)
        st = proxy.control("stats")
        report[key] = {
            "mode": mode,
            "loader_samples_s": v.get("loader_samples_s"),
            "loader_mb_s": v.get("loader_mb_s"),
            "trainer_busy": v.get("trainer_busy_loader"),
            "requests": st["requests"],
            "seconds": took,
            "bench": v,
        }
        if mode == "stream":
            log(f"{label}: shardpack loader, stream mode: {v.get('loader_mb_s') or 0:.1f} MB/s, "
                f"{v.get('loader_samples_s') or 0:.0f} samples/s"
                + (f", trainer busy {100 * v['trainer_busy_loader']:.1f}%" if v.get("trainer_busy_loader") else "")
                + f" ({st['requests']} requests and {took:.1f} s for the whole bench run)")
        else:
            log(f"{label}: shardpack bench, cache mode from an empty cache: {took:.1f} s and "
                f"{st['requests']} requests for the whole run (downloads included; its loader phase "
                f"reads the local copy: {v.get('loader_mb_s') or 0:.1f} MB/s)")
    for mode in ("stream", "cache"):
        e = fresh_env(mode)
        proxy.control("reset")
        t = time.monotonic()
        r = run([bin_, "info", url + "/ds-open"], env=e)
        took = time.monotonic() - t
        drop(e)
        st = proxy.control("stats")
        key = "open" if mode == "stream" else "open_cache"
        if r.returncode:
            report[key] = f"failed: {r.stderr.strip()[-1000:]}"
            continue
        report[key] = {"mode": mode, "shards": a.open_shards, "requests": st["requests"], "seconds": took,
                       "requests_per_shard": st["requests"] / a.open_shards}
        log(f"{label}: open (`info`, {mode} mode) of {a.open_shards} shards: {st['requests']} requests "
            f"({st['requests'] / a.open_shards:.2f} per shard) in {took:.2f} s")
    # What needs every shard in cache mode (`verify` downloads each one, several at a time).
    e = fresh_env("cache")
    proxy.control("reset")
    t = time.monotonic()
    r = run([bin_, "verify", url + "/ds-open"], env=e)
    took = time.monotonic() - t
    drop(e)
    st = proxy.control("stats")
    st["max_in_flight"] = proxy.control("in_flight")["max_in_flight"]
    if r.returncode:
        report["verify_cache"] = f"failed: {r.stderr.strip()[-1000:]}"
    else:
        report["verify_cache"] = {"shards": a.open_shards, "requests": st["requests"], "seconds": took,
                                  "max_in_flight": st.get("max_in_flight")}
        log(f"{label}: `verify`, cache mode from an empty cache, of {a.open_shards} shards: "
            f"{st['requests']} requests (downloads included, at most {st.get('max_in_flight')} in "
            f"flight) in {took:.2f} s")


def bench_store(a, bin_, www, kind, venv_python):
    report = {"store": kind}
    servers = []
    try:
        if kind == "http":
            up = Server([os.path.join(HERE, "testsrv.py"), "--max-seconds", "3600", "http", "--root", www])
            prefix = ""
        else:
            up = Server([os.path.join(HERE, "testsrv.py"), "--max-seconds", "3600", "s3", "--bucket", "bench"],
                        python=venv_python)
            t = time.monotonic()
            n = upload_s3(venv_python, up.url, "bench", www)
            log(f"s3: {n} objects uploaded to moto in {time.monotonic() - t:.0f} s")
            prefix = "/bench"
        servers.append(up)
        args = [os.path.join(HERE, "faultproxy.py"), "--upstream", up.url, "--max-seconds", "3600",
                "--latency-ms", str(a.latency_ms)]
        if a.bandwidth_mbps:
            args += ["--bandwidth-mbps", str(a.bandwidth_mbps)]
        proxy = Server(args)
        servers.append(proxy)
        fetch = Fetcher(proxy.host, proxy.port)
        shards = [(prefix + "/" + p, s) for p, s in files_under(www, "ds")]
        loose = [prefix + "/" + p for p, _ in files_under(www, "tree")]
        if kind == "s3":
            keys = [p[len(prefix) + 1:] for p, _ in shards] + [p[len(prefix) + 1:] for p in loose]
            signed = presign(venv_python, proxy.url, "bench", keys)
            shards = list(zip(signed[:len(shards)], [s for _, s in shards]))
            loose = signed[len(shards):]
        proxy.control("reset")
        report["link"] = link_rate(fetch, shards)
        log(f"{kind}: link (8 MiB ranged GETs, 8 in flight): {report['link']['mb_s']:.1f} MB/s "
            f"(cap {a.bandwidth_mbps / 8 if a.bandwidth_mbps else float('inf'):.1f} MB/s)")
        proxy.control("reset")
        b = baseline(fetch, loose, a.inflight, seed=1)
        b["requests"] = proxy.control("stats")["requests"]
        report["baseline"] = b
        log(f"{kind}: baseline, one GET per sample, {a.inflight} in flight: {b['samples_s']:.0f} samples/s, "
            f"{b['mb_s']:.1f} MB/s ({b['requests']} requests)")
        if a.step_ms:
            bt = baseline(fetch, loose, a.inflight, seed=2, batch=a.batch, step_ms=a.step_ms)
            report["baseline_trainer"] = bt
            log(f"{kind}: trainer ({a.step_ms} ms per batch of {a.batch}) fed by per-sample GETs: "
                f"busy {100 * bt['trainer_busy']:.1f}%")
        env = dict(os.environ)
        url = proxy.url
        if kind == "s3":
            env.update({"AWS_ENDPOINT_URL": proxy.url, "AWS_ENDPOINT": proxy.url, "AWS_ALLOW_HTTP": "true",
                        "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                        "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"})
            url = "s3://bench"
        shardpack_side(a, bin_, url, proxy, env, report, kind)
        sp = report.get("shardpack")
        if isinstance(sp, dict) and sp.get("loader_samples_s"):
            report["loader_to_baseline_samples"] = sp["loader_samples_s"] / b["samples_s"]
            report["loader_to_link"] = sp["loader_mb_s"] / report["link"]["mb_s"]
            log(f"{kind}: loader / baseline: {report['loader_to_baseline_samples']:.1f}x the samples per "
                f"second; loader / link: {100 * report['loader_to_link']:.0f}%")
    finally:
        for s in reversed(servers):
            s.stop()
    return report


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--kib", type=float, default=16.0)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--bandwidth-mbps", type=float, default=1600.0, help="0: no cap")
    ap.add_argument("--inflight", type=int, default=32)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--step-ms", type=float)
    ap.add_argument("--store", choices=["http", "s3", "both"], default="http")
    ap.add_argument("--open-shards", type=int, default=1000)
    ap.add_argument("--chunk-size", help="passed to `shardpack bench --chunk-size` (e.g. 8MiB)")
    ap.add_argument("--loader-threads", type=int, help="passed to `shardpack bench --loader-threads`")
    ap.add_argument("--work", default="/tmp/shardpack-bench-remote")
    ap.add_argument("--json", action="store_true", help="print the whole report as JSON on stdout")
    a = ap.parse_args()
    bin_ = find_bin()
    venv = subprocess.run([os.path.join(HERE, "remote-env.sh")], capture_output=True, text=True)
    if venv.returncode:
        raise SystemExit(f"bench-remote: scripts/remote-env.sh failed: {venv.stderr.strip()}")
    venv_python = os.path.join(venv.stdout.strip(), "bin", "python")
    www = make_data(a, bin_, a.work)
    log(f"{a.files} loose files of about {a.kib} KiB; link: {a.latency_ms} ms to the first byte, "
        f"{a.bandwidth_mbps or 'no'} Mbit/s cap; shardpack: {bin_}")
    reports = []
    for kind in (["http", "s3"] if a.store == "both" else [a.store]):
        reports.append(bench_store(a, bin_, www, kind, venv_python))
    if a.json:
        print(json.dumps({"files": a.files, "kib": a.kib, "latency_ms": a.latency_ms,
                          "bandwidth_mbps": a.bandwidth_mbps, "inflight": a.inflight, "stores": reports},
                         indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
