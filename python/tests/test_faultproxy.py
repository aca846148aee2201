"""scripts/faultproxy.py, the fault-injecting proxy of the remote tests: requests reach the
upstream byte for byte (headers, Host, Content-Length and chunked bodies), ranges pass through
nginx, each fault happens exactly on every N-th request, and latency and bandwidth are honoured
within generous bounds. The upstream is an echo server in this process (it answers each request
with the exact bytes it received) or, for ranges, nginx from scripts/testsrv.py."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROXY = REPO / "scripts" / "faultproxy.py"
TESTSRV = REPO / "scripts" / "testsrv.py"


_PERIOD = bytes((i * 7 + 3) % 251 for i in range(251))


def pattern(n: int) -> bytes:
    return (_PERIOD * (n // 251 + 1))[:n]


class EchoUpstream:
    """A keep-alive HTTP/1.1 server on loopback: `GET /len/N` answers N pattern bytes; any
    other request is answered with the raw bytes of the request it received (head and body,
    framing included)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        f = c.makefile("rb")
        try:
            while True:
                raw = bytearray()
                headers = {}
                while True:
                    line = f.readline()
                    if not line:
                        return
                    raw += line
                    if line == b"\r\n":
                        break
                    if b":" in line:
                        k, _, v = line.partition(b":")
                        headers[k.strip().lower()] = v.strip()
                if b"chunked" in headers.get(b"transfer-encoding", b""):
                    while True:
                        line = f.readline()
                        raw += line
                        size = int(line.split(b";")[0], 16)
                        if size == 0:
                            while True:
                                t = f.readline()
                                raw += t
                                if t == b"\r\n":
                                    break
                            break
                        raw += f.read(size + 2)
                else:
                    raw += f.read(int(headers.get(b"content-length", b"0")))
                with self.lock:
                    self.requests += 1
                target = raw.split(b" ")[1].decode()
                body = pattern(int(target[5:])) if target.startswith("/len/") else bytes(raw)
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        except OSError:
            return
        finally:
            c.close()

    def close(self) -> None:
        self.sock.close()


class Proc:
    """A server started with a piped stdin, answering with one JSON line; stopped by closing
    its stdin (the way tests are meant to stop them)."""

    def __init__(self, *args: str) -> None:
        self.p = subprocess.Popen(
            [sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"{args[0]} did not start: {self.p.stderr.read().decode()}")
        self.info = json.loads(line)
        self.url = self.info["url"]
        u = urllib.parse.urlsplit(self.url)
        self.host, self.port = u.hostname, u.port

    def stop(self) -> int:
        self.p.stdin.close()
        try:
            return self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise

    def stats(self) -> dict:
        c = http.client.HTTPConnection(self.host, self.port, timeout=10)
        c.request("GET", "/__proxy__/stats")
        return json.loads(c.getresponse().read())


@pytest.fixture()
def echo():
    e = EchoUpstream()
    yield e
    e.close()


def proxy(upstream: str, *args: str) -> Proc:
    return Proc(str(PROXY), "--upstream", upstream, "--max-seconds", "120", *args)


@pytest.fixture()
def make_proxy():
    started = []

    def make(upstream: str, *args: str) -> Proc:
        p = proxy(upstream, *args)
        started.append(p)
        return p

    yield make
    for p in started:
        if p.p.poll() is None:
            p.stop()


def raw_exchange(port: int, request: bytes, responses: int = 1) -> list[bytes]:
    """Sends raw request bytes on one connection; returns the bodies of `responses` answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        f = s.makefile("rb")
        out = []
        for _ in range(responses):
            n = None
            while True:
                line = f.readline()
                assert line, "the proxy closed the connection early"
                if line == b"\r\n":
                    break
                if line.lower().startswith(b"content-length:"):
                    n = int(line.split(b":")[1])
            out.append(f.read(n))
        return out


def test_the_upstream_sees_the_request_byte_for_byte(echo, make_proxy):
    p = make_proxy(echo.url)
    body = pattern(100_000)
    put = (
        b"PUT /bucket/key?partNumber=1&uploadId=x HTTP/1.1\r\n"
        b"Host: s3.example.test:9000\r\n"
        b"Authorization: AWS4-HMAC-SHA256 Credential=a/b, SignedHeaders=host;x-amz-date, Signature=00\r\n"
        b"x-amz-date: 20260101T000000Z\r\n"
        b"If-Match: \"etag\"\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body
    chunked = (
        b"POST /bucket/key?uploads HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n"
    )
    ranged = b"GET /bucket/key HTTP/1.1\r\nHost: h\r\nRange: bytes=5-9\r\n\r\n"
    # Three requests on one kept-alive connection, each seen exactly as sent.
    got = raw_exchange(p.port, put + chunked + ranged, responses=3)
    assert got == [put, chunked, ranged]
    assert p.stats() == {"requests": 3, "faults": 0, "bytes": len(put) + len(chunked) + len(ranged)}


def test_expect_100_continue_is_answered_and_the_body_forwarded(echo, make_proxy):
    p = make_proxy(echo.url)
    head = b"PUT /k HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as s:
        s.sendall(head)
        f = s.makefile("rb")
        assert f.readline().startswith(b"HTTP/1.1 100")
        assert f.readline() == b"\r\n"
        s.sendall(b"abcd")
        assert f.readline().startswith(b"HTTP/1.1 200")
        n = None
        while (line := f.readline()) != b"\r\n":
            if line.lower().startswith(b"content-length:"):
                n = int(line.split(b":")[1])
        assert f.read(n) == head + b"abcd"


def nginx_available() -> bool:
    return shutil.which("nginx") is not None or os.access("/usr/sbin/nginx", os.X_OK)


@pytest.mark.skipif(not nginx_available(), reason="nginx not installed (scripts/remote-env.sh installs it)")
def test_ranges_pass_through_nginx(tmp_path, make_proxy):
    data = os.urandom(300_000)
    (tmp_path / "blob.bin").write_bytes(data)
    srv = Proc(str(TESTSRV), "--max-seconds", "120", "http", "--root", str(tmp_path))
    try:
        p = make_proxy(srv.url)
        c = http.client.HTTPConnection(p.host, p.port, timeout=10)
        for start, end in [(0, 0), (1000, 1999), (299_990, 299_999), (123, 250_000)]:
            c.request("GET", "/blob.bin", headers={"Range": f"bytes={start}-{end}"})
            r = c.getresponse()
            assert r.status == 206
            assert r.getheader("Content-Range") == f"bytes {start}-{end}/{len(data)}"
            assert r.read() == data[start:end + 1]
        c.request("GET", "/blob.bin", headers={"Range": "bytes=-100"})
        r = c.getresponse()
        assert (r.status, r.read()) == (206, data[-100:])
        c.request("HEAD", "/blob.bin")
        r = c.getresponse()
        assert (r.status, r.getheader("Content-Length"), r.read()) == (200, str(len(data)), b"")
        c.request("GET", "/blob.bin")
        assert c.getresponse().read() == data
        c.request("GET", "/missing")
        r = c.getresponse()
        r.read()
        assert r.status == 404
        assert p.stats()["requests"] == 8
    finally:
        srv.stop()


def get(port: int, path: str, timeout: float = 10.0):
    """One GET on a fresh connection: (status, body) or the exception it raised."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.getheader("Content-Length"), r.read()
    except Exception as e:  # noqa: BLE001 (the faults raise several kinds)
        return e
    finally:
        c.close()


@pytest.mark.parametrize("kind", ["503", "403", "404", "reset", "truncate", "stall"])
def test_each_fault_happens_exactly_on_every_nth_request(kind, echo, make_proxy):
    p = make_proxy(echo.url, "--fault", kind, "--every", "3", "--stall-seconds", "20")
    body = pattern(10_000)
    for n in range(1, 8):
        got = get(p.port, "/len/10000", timeout=1.0 if kind == "stall" else 10.0)
        if n % 3:
            assert got == (200, "10000", body), f"request {n}"
            continue
        if kind in ("503", "403", "404"):
            assert isinstance(got, tuple) and got[0] == int(kind), f"request {n}: {got!r}"
            assert b"<Error><Code>" in got[2]
        elif kind == "reset":
            assert isinstance(got, (ConnectionResetError, http.client.RemoteDisconnected)), repr(got)
        elif kind == "truncate":
            assert isinstance(got, http.client.IncompleteRead), repr(got)
            assert len(got.partial) == 5000 and got.partial == body[:5000]
            assert got.expected == 5000
        else:
            assert isinstance(got, TimeoutError), repr(got)
    s = p.stats()
    assert (s["requests"], s["faults"]) == (7, 2)
    # Faults that are answered without the upstream never reach it.
    assert echo.requests == (7 if kind == "truncate" else 5)


def test_every_1_faults_every_request_and_set_changes_it(echo, make_proxy):
    p = make_proxy(echo.url, "--fault", "503")
    assert [get(p.port, "/len/1")[0] for _ in range(3)] == [503, 503, 503]
    c = http.client.HTTPConnection(p.host, p.port, timeout=10)
    c.request("GET", "/__proxy__/set?fault=reset&every=2")
    assert json.loads(c.getresponse().read())["fault"] == "reset"
    got = [get(p.port, "/len/1") for _ in range(4)]
    assert got[0] == (200, "1", pattern(1)) and got[2] == got[0]
    assert not isinstance(got[1], tuple) and not isinstance(got[3], tuple)
    c.request("GET", "/__proxy__/set?fault=none")
    c.getresponse().read()
    assert get(p.port, "/len/1")[0] == 200
    c.request("GET", "/__proxy__/set?fault=bogus")
    r = c.getresponse()
    r.read()
    assert r.status == 400
    assert p.stats() == {"requests": 8, "faults": 5, "bytes": 3}


def test_latency_delays_each_first_byte(echo, make_proxy):
    p = make_proxy(echo.url, "--latency-ms", "150")
    c = http.client.HTTPConnection(p.host, p.port, timeout=10)
    for _ in range(4):
        t = time.monotonic()
        c.request("GET", "/len/100")
        r = c.getresponse()
        assert r.read() == pattern(100)
        took = time.monotonic() - t
        assert 0.14 <= took < 2.0, took


def test_bandwidth_caps_all_connections_together(echo, make_proxy):
    # 40 Mbit/s = 5 MB/s; four concurrent 2.5 MB downloads: about 2 s in total.
    p = make_proxy(echo.url, "--bandwidth-mbps", "40")
    n = 2_500_000
    results = []

    def fetch():
        results.append(get(p.port, f"/len/{n}", timeout=30))

    t = time.monotonic()
    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    took = time.monotonic() - t
    assert all(r[0] == 200 and len(r[2]) == n for r in results)
    assert 1.4 < took < 8.0, took
    assert p.stats()["bytes"] == 4 * n


def test_stops_on_stdin_eof_and_sigterm(echo):
    p = proxy(echo.url)
    assert p.info["kind"] == "proxy" and p.info["pid"] == p.p.pid
    t = time.monotonic()
    assert p.stop() == 0
    assert time.monotonic() - t < 5
    q = proxy(echo.url)
    q.p.send_signal(signal.SIGTERM)
    assert q.p.wait(timeout=5) == 0
    q.p.stdin.close()
