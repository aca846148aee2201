#!/usr/bin/env python3
"""Loopback servers for shardpack's remote tests and benchmarks.

    testsrv.py http --root DIR            # nginx serving DIR (answers Range: with 206)
    testsrv.py s3 [--bucket NAME ...]     # moto's S3 emulator, with the buckets created

Each prints one JSON line on stdout once the server answers, for example
    {"kind": "http", "url": "http://127.0.0.1:41233", "pid": 1234}
and then stays in the foreground. The server stops by itself (its process group is killed)
when this program's stdin reaches end of file (the test that started it closed the pipe or
died), on SIGTERM/SIGINT, or after --max-seconds (default 1800). Servers bind to 127.0.0.1
only.

nginx comes from Debian's nginx-light and moto from the venv of scripts/remote-env.sh, which
installs both; `--nginx` and `--moto` override where they are looked for.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_tcp(port, proc, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"testsrv: {what} exited with status {proc.returncode} before answering")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"testsrv: {what} did not answer on 127.0.0.1:{port} within {timeout:.0f} s")


NGINX_CONF = """\
daemon off;
master_process off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    sendfile on;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
    }}
}}
"""


def find_nginx(given):
    for cand in [given, shutil.which("nginx"), "/usr/sbin/nginx"]:
        if cand and os.access(cand, os.X_OK):
            return cand
    raise SystemExit("testsrv: nginx not found; run scripts/remote-env.sh (installs Debian's nginx-light)")


def find_moto(given):
    cands = [given]
    venv = os.environ.get("SHARDPACK_REMOTE_VENV")
    if venv:
        cands.append(os.path.join(venv, "bin", "moto_server"))
    try:
        out = subprocess.run(
            [os.path.join(HERE, "remote-env.sh"), "--print-venv"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        cands.append(os.path.join(out, "bin", "moto_server"))
    except (OSError, subprocess.CalledProcessError):
        pass
    cands.append(shutil.which("moto_server"))
    for cand in cands:
        if cand and os.access(cand, os.X_OK):
            return cand
    raise SystemExit("testsrv: moto_server not found; run scripts/remote-env.sh (installs moto[server] into a venv)")


def start_http(args, tmp):
    nginx = find_nginx(args.nginx)
    root = os.path.abspath(args.root)
    if not os.path.isdir(root):
        raise SystemExit(f"testsrv: --root {root} is not a directory")
    for attempt in range(5):
        port = free_port()
        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(tmp=tmp, port=port, root=root))
        proc = subprocess.Popen(
            [nginx, "-p", tmp, "-c", conf, "-e", os.path.join(tmp, "error.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            wait_tcp(port, proc, "nginx", timeout=20)
            return proc, f"http://127.0.0.1:{port}"
        except SystemExit:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            if attempt == 4:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise SystemExit(f"testsrv: nginx did not start: {err.strip()}")


def start_s3(args, tmp):
    moto = find_moto(args.moto)
    for attempt in range(5):
        port = free_port()
        proc = subprocess.Popen(
            [moto, "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(tmp, "moto.log"), "wb"),
            start_new_session=True,
        )
        try:
            wait_tcp(port, proc, "moto_server", timeout=60)
            break
        except SystemExit:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            if attempt == 4:
                raise
    url = f"http://127.0.0.1:{port}"
    for bucket in args.bucket:
        # moto in server mode accepts an unsigned CreateBucket.
        req = urllib.request.Request(f"{url}/{bucket}", method="PUT", data=b"")
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
    return proc, url


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-seconds", type=float, default=1800.0)
    sub = ap.add_subparsers(dest="kind", required=True)
    h = sub.add_parser("http", help="nginx serving a folder")
    h.add_argument("--root", required=True)
    h.add_argument("--nginx")
    s = sub.add_parser("s3", help="moto's S3 emulator")
    s.add_argument("--bucket", action="append", default=[])
    s.add_argument("--moto")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="shardpack-testsrv-")
    proc = None
    stop = threading.Event()

    def shutdown(*_):
        stop.set()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    try:
        proc, url = start_http(args, tmp) if args.kind == "http" else start_s3(args, tmp)
        print(json.dumps({"kind": args.kind, "url": url, "pid": proc.pid}), flush=True)

        def watch_stdin():
            try:
                while sys.stdin.buffer.read(4096):
                    pass
            except (OSError, ValueError):
                pass
            stop.set()

        threading.Thread(target=watch_stdin, daemon=True).start()
        deadline = time.monotonic() + args.max_seconds
        while not stop.is_set() and time.monotonic() < deadline:
            if proc.poll() is not None:
                print(f"testsrv: {args.kind} server exited with status {proc.returncode}", file=sys.stderr)
                return 1
            stop.wait(0.2)
        return 0
    finally:
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
