#!/usr/bin/env python3
"""A fault-injecting HTTP/1.1 reverse proxy on loopback, in front of one upstream (the nginx or
moto of scripts/testsrv.py), for shardpack's retry tests and remote benchmarks.

    faultproxy.py --upstream http://127.0.0.1:PORT [--latency-ms MS] [--bandwidth-mbps N]
                  [--fault KIND --every N] [--stall-seconds S] [--max-seconds S]

It prints one JSON line on stdout once it listens, for example
    {"kind": "proxy", "url": "http://127.0.0.1:41234", "pid": 1234, "upstream": "http://..."}
and stops by itself when its stdin reaches end of file (the test that started it closed the
pipe or died), on SIGTERM/SIGINT, or after --max-seconds (default 1800). It binds to 127.0.0.1
only.

Requests are forwarded byte for byte: the request line, every header as the client sent it (Host
included, so signed S3 requests still verify: the signature covers the Host the client signed)
and the body with its own framing (Content-Length or chunked). Responses come back the same way.
One upstream connection is kept per client connection.

Faults: with --fault KIND --every N, every N-th proxied request (the N-th, 2N-th, ...; N=1:
all of them) gets the fault instead of a normal answer:
    503       answers 503 Service Unavailable (an S3-style XML error body); not forwarded
    403, 404  answers 403 Forbidden / 404 Not Found the same way; not forwarded
    reset     closes the connection without answering (with SO_LINGER 0: a TCP reset)
    truncate  forwards the request, sends the status and headers (the full Content-Length),
              then only the first half of the body, then closes the connection (a response
              without a body, to HEAD say: the head, then the close)
    stall     sends nothing for --stall-seconds (default 300), then closes: a client's timeout
              fires first; not forwarded

--latency-ms MS delays the first byte of every response (faults included) by MS after the
upstream's answer (or the fault's decision). --bandwidth-mbps N caps the total rate of the
response bodies sent to all clients together at N megabits per second (10^6 bit/s; one token
bucket shared by every connection; N=80 is 10 MB/s).

Control endpoints (answered by the proxy itself, not counted as requests):
    GET /__proxy__/stats   {"requests": n, "faults": m, "bytes": b}: proxied requests, faults
                           injected, response body bytes sent to clients
    GET /__proxy__/in_flight  {"max_in_flight": k}: the most requests waiting for their
                           answer's first byte at one time (at most the client's concurrent
                           requests: each is counted off before its answer's first byte)
    GET /__proxy__/reset   zeroes the counters (and restarts the every-N count)
    GET /__proxy__/set?fault=KIND&every=N&latency_ms=MS&bandwidth_mbps=N
                           changes any of the settings at run time (fault=none: no fault);
                           restarts the every-N count. Answers the new settings as JSON.
"""

import argparse
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
import urllib.parse

FAULTS = ("503", "reset", "truncate", "stall", "403", "404")
BLOCK = 64 * 1024
MAX_HEAD = 64 * 1024


class TokenBucket:
    """A rate limit shared by threads: each send takes its bytes from the bucket, going into
    debt when it is empty, and sleeps until the debt is paid back."""

    def __init__(self):
        self.lock = threading.Lock()
        self.rate = None  # bytes per second; None: no limit
        self.tokens = 0.0
        self.last = time.monotonic()

    def set_mbps(self, mbps):
        with self.lock:
            self.rate = mbps * 1e6 / 8 if mbps else None
            self.tokens = 0.0
            self.last = time.monotonic()

    def take(self, n):
        with self.lock:
            rate = self.rate
            if rate is None:
                return
            now = time.monotonic()
            burst = max(BLOCK, rate * 0.005)
            self.tokens = min(burst, self.tokens + (now - self.last) * rate)
            self.last = now
            self.tokens -= n
            wait = -self.tokens / rate if self.tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)


class State:
    def __init__(self, args):
        self.lock = threading.Lock()
        host_port = urllib.parse.urlsplit(args.upstream)
        if host_port.scheme != "http" or not host_port.hostname:
            raise SystemExit(f"faultproxy: --upstream must be http://HOST:PORT, not {args.upstream}")
        self.upstream = (host_port.hostname, host_port.port or 80)
        self.upstream_url = args.upstream.rstrip("/")
        self.fault = args.fault
        self.every = args.every
        self.latency = args.latency_ms / 1000.0
        self.stall = args.stall_seconds
        self.bucket = TokenBucket()
        self.bandwidth_mbps = args.bandwidth_mbps
        self.bucket.set_mbps(args.bandwidth_mbps)
        self.requests = 0
        self.faults = 0
        self.bytes = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.since_set = 0
        self.stop = threading.Event()

    def next_request(self):
        """Counts a proxied request; returns the fault it gets, or None."""
        with self.lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.since_set += 1
            if self.fault and self.since_set % self.every == 0:
                self.faults += 1
                return self.fault
            return None

    def answered(self):
        """A request counted by next_request no longer waits (its answer starts, or it is dropped)."""
        with self.lock:
            self.in_flight -= 1

    def sent(self, n):
        with self.lock:
            self.bytes += n

    def stats(self):
        with self.lock:
            return {"requests": self.requests, "faults": self.faults, "bytes": self.bytes}

    def settings(self):
        with self.lock:
            return {
                "fault": self.fault,
                "every": self.every,
                "latency_ms": self.latency * 1000.0,
                "bandwidth_mbps": self.bandwidth_mbps,
            }


class Closed(Exception):
    """The peer closed the connection (or sent something that is not HTTP/1.x)."""


def read_head(f):
    """Reads a request or response head up to the empty line: the raw bytes (forwarded as
    they are), the first line and the headers as a list of (lower-case name, value)."""
    raw = bytearray()
    lines = []
    while True:
        line = f.readline(MAX_HEAD + 1)
        if not line:
            if raw:
                raise Closed("connection closed inside a head")
            raise Closed("connection closed")
        raw += line
        if len(raw) > MAX_HEAD:
            raise Closed("head too long")
        if line in (b"\r\n", b"\n"):
            if not lines:  # stray empty lines before a request are allowed (RFC 9112 2.2)
                raw.clear()
                continue
            break
        lines.append(line.rstrip(b"\r\n"))
    headers = []
    for h in lines[1:]:
        name, _, value = h.partition(b":")
        headers.append((name.strip().lower().decode("latin-1"), value.strip().decode("latin-1")))
    return bytes(raw), lines[0].decode("latin-1"), headers


def header(headers, name):
    for n, v in headers:
        if n == name:
            return v
    return None


def is_chunked(headers):
    te = header(headers, "transfer-encoding")
    return te is not None and "chunked" in te.lower()


def read_body_raw(f, headers):
    """A request body with its framing kept (chunk sizes and trailers included), so it is
    forwarded as the client sent it."""
    if is_chunked(headers):
        out = bytearray()
        while True:
            line = f.readline(MAX_HEAD)
            if not line:
                raise Closed("connection closed inside a chunked body")
            out += line
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers up to the empty line
                    t = f.readline(MAX_HEAD)
                    if not t:
                        raise Closed("connection closed inside trailers")
                    out += t
                    if t in (b"\r\n", b"\n"):
                        return bytes(out)
            data = f.read(size + 2)
            if len(data) < size + 2:
                raise Closed("connection closed inside a chunk")
            out += data
    n = header(headers, "content-length")
    if n is None:
        return b""
    n = int(n)
    data = f.read(n)
    if len(data) < n:
        raise Closed("connection closed inside a body")
    return data


def sendall_limited(state, sock, data):
    """Sends response body bytes under the bandwidth cap, counting them."""
    view = memoryview(data)
    for i in range(0, len(view), BLOCK):
        part = view[i:i + BLOCK]
        state.bucket.take(len(part))
        state.sent(len(part))  # before sending: a client that has the bytes sees them counted
        sock.sendall(part)


REASONS = {503: "Service Unavailable", 403: "Forbidden", 404: "Not Found", 200: "OK"}
CODES = {503: "ServiceUnavailable", 403: "AccessDenied", 404: "NoSuchKey"}


def simple_response(status, body, content_type="application/xml", close=False):
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        + ("Connection: close\r\n" if close else "")
        + "\r\n"
    )
    return head.encode("latin-1") + body


def error_body(status, target):
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{CODES[status]}</Code><Message>injected by faultproxy</Message>"
        f"<Resource>{target}</Resource></Error>\n"
    ).encode()


class Upstream:
    """The upstream connection of one client connection, opened on first use and again after
    the upstream closed it."""

    def __init__(self, state):
        self.state = state
        self.sock = None
        self.f = None

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.f = None

    def connect(self):
        self.close()
        self.sock = socket.create_connection(self.state.upstream, timeout=300)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.sock.makefile("rb", buffering=BLOCK)

    def exchange(self, request):
        """Sends the request; returns the head of the final (non-1xx) response. A kept-alive
        connection the upstream closed meanwhile is reopened once (nothing was answered, so
        sending again is safe)."""
        for attempt in (0, 1):
            fresh = self.sock is None
            if fresh:
                self.connect()
            try:
                self.sock.sendall(request)
                while True:
                    raw, first, headers = read_head(self.f)
                    status = int(first.split()[1])
                    if not 100 <= status < 200 or status == 101:
                        return raw, first, headers, status
                    # 100 Continue: the proxy already told the client to send its body.
            except (Closed, ConnectionError, BrokenPipeError) as e:
                self.close()
                if fresh or attempt == 1:
                    raise Closed(f"upstream: {e}")
        raise AssertionError("unreachable")


def handle_control(state, sock, target):
    url = urllib.parse.urlsplit(target)
    if url.path == "/__proxy__/stats":
        body = json.dumps(state.stats()).encode()
    elif url.path == "/__proxy__/in_flight":
        with state.lock:
            body = json.dumps({"max_in_flight": state.max_in_flight}).encode()
    elif url.path == "/__proxy__/reset":
        with state.lock:
            state.requests = state.faults = state.bytes = state.since_set = 0
            state.max_in_flight = state.in_flight
        body = json.dumps(state.stats()).encode()
    elif url.path == "/__proxy__/set":
        q = dict(urllib.parse.parse_qsl(url.query))
        try:
            fault = q.get("fault")
            if fault is not None and fault != "none" and fault not in FAULTS:
                raise ValueError(f"unknown fault {fault!r}; one of {', '.join(FAULTS)} or none")
            every = int(q["every"]) if "every" in q else None
            if every is not None and every < 1:
                raise ValueError("every must be at least 1")
            latency = float(q["latency_ms"]) if "latency_ms" in q else None
            bw = float(q["bandwidth_mbps"]) if "bandwidth_mbps" in q else None
        except ValueError as e:
            sock.sendall(simple_response(400, f"{e}\n".encode(), "text/plain"))
            return
        with state.lock:
            if fault is not None:
                state.fault = None if fault == "none" else fault
            if every is not None:
                state.every = every
            if latency is not None:
                state.latency = latency / 1000.0
            if bw is not None:
                state.bandwidth_mbps = bw or None
            state.since_set = 0
        if bw is not None:
            state.bucket.set_mbps(bw or None)
        body = json.dumps(state.settings()).encode()
    else:
        sock.sendall(simple_response(404, b"unknown control endpoint\n", "text/plain"))
        return
    sock.sendall(simple_response(200, body, "application/json"))


def relay_response(state, client, up, method, head, headers, status, truncate):
    """Sends the upstream's response to the client. Returns False when the client connection
    must be closed afterwards."""
    keep = True
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        framing = "none"
    elif is_chunked(headers):
        framing = "chunked"
    elif header(headers, "content-length") is not None:
        framing = "length"
    else:
        framing = "close"
        keep = False
    conn = (header(headers, "connection") or "").lower()
    if "close" in conn:
        keep = False
    if truncate:
        # Read the whole body first (bodies in tests are small), then send half of it.
        if framing == "length":
            body = up.f.read(int(header(headers, "content-length")))
        elif framing == "chunked":
            body = read_body_raw(up.f, headers)
        elif framing == "close":
            body = up.f.read()
        else:
            body = b""
        up.close()
        client.sendall(head)
        sendall_limited(state, client, body[: len(body) // 2])
        return False
    client.sendall(head)
    if framing == "length":
        left = int(header(headers, "content-length"))
        while left > 0:
            data = up.f.read1(min(BLOCK, left))
            if not data:
                raise Closed("upstream closed inside a body")
            left -= len(data)
            sendall_limited(state, client, data)
    elif framing == "chunked":
        sendall_limited(state, client, read_body_raw(up.f, headers))
    elif framing == "close":
        while True:
            data = up.f.read1(BLOCK)
            if not data:
                break
            sendall_limited(state, client, data)
    if not keep:
        up.close()
    return keep


def serve_client(state, client):
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.settimeout(600)
    f = client.makefile("rb", buffering=BLOCK)
    up = Upstream(state)
    counted = False  # a request counted by next_request waits for its answer
    try:
        while not state.stop.is_set():
            if counted:
                state.answered()
                counted = False
            try:
                head, first, headers = read_head(f)
            except (Closed, OSError):
                return
            parts = first.split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                client.sendall(simple_response(400, b"not an HTTP/1.x request\n", "text/plain", True))
                return
            method, target, version = parts
            if urllib.parse.urlsplit(target).path.startswith("/__proxy__/"):
                read_body_raw(f, headers)
                handle_control(state, client, target)
                continue
            conn = (header(headers, "connection") or "").lower()
            client_keep = "close" not in conn and (version != "HTTP/1.0" or "keep-alive" in conn)
            fault = state.next_request()
            counted = True
            expect = (header(headers, "expect") or "").lower() == "100-continue"
            if not (fault in ("reset", "stall") or (fault in ("503", "403", "404") and expect)):
                # (An error for a client that waits for 100 Continue goes before any body.)
                if expect:
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = read_body_raw(f, headers)
            if fault == "reset":
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            if fault == "stall":
                state.stop.wait(state.stall)
                return
            if fault in ("503", "403", "404"):
                status = int(fault)
                if state.latency:
                    time.sleep(state.latency)
                state.answered()
                counted = False
                client.sendall(simple_response(status, error_body(status, target), close=expect))
                if expect or not client_keep:
                    return
                continue
            up_head, _, up_headers, status = up.exchange(head + body)
            if state.latency:
                time.sleep(state.latency)
            # No longer waiting: counted off before the first byte goes out, so a client's next
            # request (sent once it has this whole answer) never overlaps this one here.
            state.answered()
            counted = False
            keep = relay_response(state, client, up, method, up_head, up_headers, status,
                                  fault == "truncate")
            if not (keep and client_keep):
                return
    except (Closed, OSError, ValueError) as e:
        if not state.stop.is_set() and not isinstance(e, (ConnectionError, BrokenPipeError)):
            print(f"faultproxy: {e}", file=sys.stderr, flush=True)
    finally:
        if counted:
            state.answered()
        up.close()
        try:
            client.close()
        except OSError:
            pass


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", required=True, help="http://HOST:PORT of the server behind the proxy")
    ap.add_argument("--latency-ms", type=float, default=0.0, help="delay of each response's first byte")
    ap.add_argument("--bandwidth-mbps", type=float, default=None,
                    help="cap on all response bodies together, megabits (10^6 bit) per second")
    ap.add_argument("--fault", choices=FAULTS, help="the fault every N-th request gets")
    ap.add_argument("--every", type=int, default=1, metavar="N", help="N of --fault (1: every request)")
    ap.add_argument("--stall-seconds", type=float, default=300.0, help="how long a stall lasts")
    ap.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    ap.add_argument("--max-seconds", type=float, default=1800.0)
    args = ap.parse_args()
    if args.every < 1:
        ap.error("--every must be at least 1")
    if args.latency_ms < 0 or (args.bandwidth_mbps is not None and args.bandwidth_mbps <= 0):
        ap.error("--latency-ms must be >= 0 and --bandwidth-mbps > 0")

    state = State(args)
    signal.signal(signal.SIGTERM, lambda *_: state.stop.set())
    signal.signal(signal.SIGINT, lambda *_: state.stop.set())

    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", args.port))
    lsock.listen(512)
    lsock.settimeout(0.2)
    port = lsock.getsockname()[1]
    print(json.dumps({"kind": "proxy", "url": f"http://127.0.0.1:{port}", "pid": os.getpid(),
                      "upstream": state.upstream_url}), flush=True)

    def watch_stdin():
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        state.stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    deadline = time.monotonic() + args.max_seconds
    try:
        while not state.stop.is_set() and time.monotonic() < deadline:
            try:
                client, _ = lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                if state.stop.is_set():
                    break
                raise
            client.settimeout(None)
            threading.Thread(target=serve_client, args=(state, client), daemon=True).start()
    finally:
        state.stop.set()
        lsock.close()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Not sys.exit: the daemon thread blocked reading stdin would make interpreter shutdown
    # abort (it holds stdin's buffer lock); nothing else needs cleaning up.
    os._exit(code)
