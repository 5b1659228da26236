"""Helpers for the swarm end-to-end tests (``test_swarm.py``): real processes and real servers only.

- ``MotoServer``: moto's standalone S3 server as a subprocess on loopback.
- ``CountingProxy``: a small threaded HTTP reverse proxy in front of it, in the test process, that
  forwards every request with ``http.client`` and counts the bytes of GET response bodies per
  object (and, optionally, throttles them to a rate, which makes a broadcast slow enough to kill
  things in the middle of it, deterministically). Optional fault injection (``faults=``): a callable
  that sees every request (``FaultRequest``) and may answer it with an S3-style 5xx error
  (``Fault.status``), send the headers and part of the body and then drop the connection
  (``Fault.drop``), or not answer at all (``Fault.stall``); ``FlakyObjects`` is a deterministic one.
- ``wait_for`` / ``poll_status``: polling with deadlines, and ``maps_of`` to find which file a
  memory address belongs to (``/proc/self/maps``).
"""

from __future__ import annotations

import http.client
import http.server
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

AWS_KEY = "modeldist-swarm-key"
AWS_SECRET = "modeldist-swarm-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def aws_env(tmp: Path) -> dict[str, str]:
    """Dummy credentials for pyarrow's S3 client; nothing from the user's AWS config leaks in."""
    return {
        "AWS_ACCESS_KEY_ID": AWS_KEY,
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
    }


def header_bytes(origin_dir: Path) -> int:
    """What building the manifest reads: 8 + header length per .safetensors file, every index whole."""
    total = 0
    for f in sorted(origin_dir.rglob("*")):
        if f.suffix == ".safetensors":
            with open(f, "rb") as fh:
                total += 8 + struct.unpack("<Q", fh.read(8))[0]
        elif f.name.endswith(".safetensors.index.json"):
            total += f.stat().st_size
    return total


def scrape(port: int) -> dict[str, float]:
    """Every sample of a /metrics page on 127.0.0.1:``port``: series (with labels) -> value."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def wait_for(pred: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# ------------------------------------------------------------------------------------------------
# moto's standalone S3 server


class MotoServer:
    def __init__(self, workdir: Path):
        self.port = free_port()
        self.log_path = Path(workdir) / "moto.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "MotoServer":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        finally:
            log.close()
        try:
            deadline = time.monotonic() + 30
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"moto server exited with {self.proc.returncode}: "
                                       f"{self.log_path.read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/moto-api/", timeout=1) as resp:
                        if resp.status == 200:
                            break
                except (urllib.error.URLError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not answer on port {self.port} within 30s")
                time.sleep(0.1)
        except BaseException:
            self.close()
            raise
        return self

    def upload_folder(self, folder: Path, bucket: str, prefix: str) -> None:
        import boto3

        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.port}", region_name="us-east-1",
                              aws_access_key_id=AWS_KEY, aws_secret_access_key=AWS_SECRET)
        try:
            client.create_bucket(Bucket=bucket)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------
# counting (and throttling) reverse proxy


@dataclass
class GetRecord:
    path: str          # URL path, unquoted: /bucket/key
    query: str
    range: str         # the Range header, "" when none
    status: int
    nbytes: int        # body bytes sent to the client
    started: float = 0.0   # time.monotonic() when the request arrived
    answered: float = 0.0  # ... when the upstream's response headers arrived
    ended: float = 0.0     # ... when the body was sent
    fault: str = ""        # the injected fault's kind ("status", "drop", "stall"), "" when none


@dataclass(frozen=True)
class FaultRecord:
    method: str
    path: str
    range: str
    kind: str          # "status" | "drop" | "stall"
    status: int        # the status sent (0 when none was)
    nbytes: int        # body bytes sent before the fault


@dataclass
class ProxyStats:
    gets: list[GetRecord] = field(default_factory=list)
    methods: dict[str, int] = field(default_factory=dict)
    faults: list[FaultRecord] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def object_gets(self, bucket: str) -> list[GetRecord]:
        """GETs of objects (not bucket listings: those are GETs of the bucket itself)."""
        with self.lock:
            return [g for g in self.gets if g.path.startswith(f"/{bucket}/") and len(g.path) > len(bucket) + 2]

    def listing_gets(self, bucket: str) -> list[GetRecord]:
        with self.lock:
            return [g for g in self.gets if g.path.rstrip("/") == f"/{bucket}"]

    def object_bytes(self, bucket: str) -> int:
        """Object body bytes of successful GETs (2xx, no injected fault): what the clients got."""
        return sum(g.nbytes for g in self.object_gets(bucket) if g.status in (200, 206) and not g.fault)

    def failed_bytes(self, bucket: str) -> int:
        """Object body bytes sent in failed GETs (injected faults, error statuses)."""
        return sum(g.nbytes for g in self.object_gets(bucket) if g.status not in (200, 206) or g.fault)

    def injected(self, kind: str | None = None) -> int:
        """How many faults were injected (of ``kind`` when given)."""
        with self.lock:
            return sum(1 for f in self.faults if kind is None or f.kind == kind)

    def reset(self) -> None:
        with self.lock:
            self.gets.clear()
            self.methods.clear()
            self.faults.clear()


@dataclass(frozen=True)
class FaultRequest:
    """What a fault policy sees of a request, before anything is forwarded."""

    method: str
    path: str          # URL path, unquoted: /bucket/key
    query: str
    range: str         # the Range header, "" when none
    attempt: int       # how many earlier requests had the same method, path, query and range
    distinct: int      # the order in which that (method, path, query, range) was first seen, from 0
    ordinal: int       # how many requests the proxy saw before this one, from 0


@dataclass(frozen=True)
class Fault:
    """``Fault.status(503)``: an S3-style XML error, nothing forwarded; ``Fault.drop(0.5)``: the
    upstream's status and headers, then that share of the body, then the connection is closed (a
    TCP reset with ``reset=True``); ``Fault.stall(s)``: no answer for ``s`` seconds (or until the
    client gives up or the proxy closes), then the connection is closed."""

    kind: str
    code: int = 0
    fraction: float = 0.5
    reset: bool = False
    seconds: float = 0.0

    @classmethod
    def status(cls, code: int = 503) -> "Fault":
        return cls("status", code=code)

    @classmethod
    def drop(cls, fraction: float = 0.5, *, reset: bool = False) -> "Fault":
        return cls("drop", fraction=fraction, reset=reset)

    @classmethod
    def stall(cls, seconds: float = 30.0) -> "Fault":
        return cls("stall", seconds=seconds)


FaultPolicy = Callable[[FaultRequest], "Fault | None"]

_S3_ERRORS = {500: ("InternalError", "We encountered an internal error. Please try again."),
              502: ("BadGateway", "Bad gateway."),
              503: ("SlowDown", "Please reduce your request rate."),
              504: ("GatewayTimeout", "Gateway timeout.")}


def s3_error_body(code: int, path: str) -> bytes:
    name, message = _S3_ERRORS.get(code, ("ServiceUnavailable", "Service is unable to handle request."))
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{name}</Code><Message>{message}</Message>'
            f"<Resource>{path}</Resource><RequestId>modeldist-fault</RequestId></Error>").encode()


class FlakyObjects:
    """A deterministic flaky object store for ``CountingProxy(faults=...)``. Only GETs of objects
    in ``bucket`` fail (not listings, not HEADs). Distinct requests (key + range) are numbered in
    the order first seen; the first attempt of every ``status_every``-th one is answered with
    ``status``, and the first (or, after a status fault, the second) attempt of every
    ``drop_every``-th one gets ``drop_fraction`` of its body before the connection is closed. Every
    range succeeds by its third attempt, whatever the threads' interleaving. 0 disables a kind;
    ``always`` answers every object GET with ``status`` (an origin that never recovers)."""

    def __init__(self, bucket: str, *, status_every: int = 3, drop_every: int = 5, status: int = 503,
                 drop_fraction: float = 0.5, reset: bool = False, always: bool = False):
        self.bucket = bucket
        self.status_every = status_every
        self.drop_every = drop_every
        self.code = status
        self.drop_fraction = drop_fraction
        self.reset = reset
        self.always = always
        self._numbers: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def plan_of(self, path: str, rng: str) -> list[Fault]:
        """The faults planned for the GET of ``path`` (/bucket/key) with Range ``rng``."""
        with self._lock:
            n = self._numbers.get((path, rng))
        return [] if n is None else self.plan(n)

    def plan(self, distinct: int) -> list[Fault]:
        """The faults the first attempts of the ``distinct``-th request get, in order."""
        out = []
        n = distinct + 1
        if self.status_every and n % self.status_every == 0:
            out.append(Fault.status(self.code))
        if self.drop_every and n % self.drop_every == 0:
            out.append(Fault.drop(self.drop_fraction, reset=self.reset))
        return out

    def __call__(self, req: FaultRequest) -> Fault | None:
        if req.method != "GET" or not req.path.startswith(f"/{self.bucket}/") or len(req.path) <= len(self.bucket) + 2:
            return None
        if self.always:
            return Fault.status(self.code)
        with self._lock:
            self._numbers.setdefault((req.path, req.range), req.distinct)
        plan = self.plan(req.distinct)
        return plan[req.attempt] if req.attempt < len(plan) else None


_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
        "transfer-encoding", "upgrade", "expect"}


class _Bucket:
    """Token bucket shared by every connection: bytes per second over all GET bodies."""

    def __init__(self, rate: float | None):
        self.rate = rate
        self.lock = threading.Lock()
        self.next_free = time.monotonic()

    def take(self, n: int) -> None:
        if not self.rate:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_free)
            self.next_free = start + n / self.rate
            wait = self.next_free - now
        if wait > 0:
            time.sleep(wait)


class CountingProxy:
    """``http://127.0.0.1:<port>`` -> ``upstream``; counts GET body bytes; ``rate`` throttles them (B/s);
    ``faults`` (a ``FaultPolicy``, e.g. ``FlakyObjects``) injects failures."""

    def __init__(self, upstream_port: int, *, rate: float | None = None, faults: FaultPolicy | None = None):
        self.upstream_port = upstream_port
        self.stats = ProxyStats()
        self.bucket = _Bucket(rate)
        self.faults = faults
        self._seen: dict[tuple[str, str, str, str], int] = {}
        self._distinct: dict[tuple[str, str, str, str], int] = {}
        self._ordinal = 0
        self._closing = threading.Event()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _forward(self) -> None:
                self._t0 = time.monotonic()
                self._t1 = 0.0
                self._fault: Fault | None = None
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy.faults is not None:
                    self._fault = proxy.faults(proxy._fault_request(self.command, self.path,
                                                                    self.headers.get("Range", "")))
                    if self._fault is not None and self._fault.kind == "status":
                        return self._answer_error(self._fault.code)
                    if self._fault is not None and self._fault.kind == "stall":
                        return self._stall(self._fault.seconds)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                up = getattr(self, "_up", None)
                if up is None:
                    up = self._up = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                try:
                    up.request(self.command, self.path, body=body, headers=headers)
                    resp = up.getresponse()
                    self._t1 = time.monotonic()
                    size = resp.getheader("Content-Length")
                    data = None if (size is not None or self.command == "HEAD") else resp.read()
                except (OSError, http.client.HTTPException):
                    up.close()
                    self._up = None
                    self.close_connection = True
                    return
                self.send_response_only(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in _HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)) if data is not None else (size or "0"))
                self.end_headers()
                sent = 0
                try:
                    if self.command == "HEAD":
                        resp.read()
                        if self._fault is not None and self._fault.kind == "drop":
                            self._drop_connection(self._fault.reset)
                        return
                    left = len(data) if data is not None else int(size or 0)
                    view = memoryview(data) if data is not None else None
                    drop = self._fault is not None and self._fault.kind == "drop"
                    if drop:  # that share of the body, then the connection goes
                        left = min(left, int(left * self._fault.fraction))
                    while left > 0:
                        n = min(left, 64 << 10)
                        part = view[sent:sent + n] if view is not None else resp.read(n)
                        if not part:
                            raise ConnectionError("upstream closed early")
                        if self.command == "GET":
                            proxy.bucket.take(len(part))
                        self.wfile.write(part)
                        sent += len(part)
                        left -= len(part)
                    if drop:
                        up.close()  # the rest of the upstream's body is never read
                        self._up = None
                        self._drop_connection(self._fault.reset)
                except (OSError, http.client.HTTPException):
                    up.close()
                    self._up = None
                    self.close_connection = True
                finally:
                    self._record(resp.status, sent)

            def _answer_error(self, code: int) -> None:
                data = s3_error_body(code, urllib.parse.unquote(urllib.parse.urlsplit(self.path).path))
                self._t1 = time.monotonic()
                sent = 0
                try:
                    self.send_response_only(code)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("x-amz-request-id", "modeldist-fault")
                    self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                        sent = len(data)
                except OSError:
                    self.close_connection = True
                finally:
                    self._record(code, sent)

            def _stall(self, seconds: float) -> None:
                """No answer until ``seconds`` pass, the client hangs up or the proxy closes."""
                import select

                deadline = time.monotonic() + seconds
                try:
                    while not proxy._closing.is_set() and time.monotonic() < deadline:
                        readable, _, _ = select.select([self.connection], [], [], 0.05)
                        if readable and not self.connection.recv(1, socket.MSG_PEEK):
                            break  # the client gave up
                except OSError:
                    pass
                finally:
                    self._drop_connection(reset=False)
                    self._record(0, 0)

            def _drop_connection(self, reset: bool) -> None:
                self.close_connection = True
                try:
                    if reset:  # RST instead of FIN, when the last reference to the socket goes
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        self.connection.close()
                    else:
                        self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def _record(self, status: int, sent: int) -> None:
                url = urllib.parse.urlsplit(self.path)
                path = urllib.parse.unquote(url.path)
                rng = self.headers.get("Range", "")
                fault = getattr(self, "_fault", None)
                with proxy.stats.lock:
                    proxy.stats.methods[self.command] = proxy.stats.methods.get(self.command, 0) + 1
                    if fault is not None:
                        proxy.stats.faults.append(FaultRecord(self.command, path, rng, fault.kind, status, sent))
                    if self.command == "GET":
                        proxy.stats.gets.append(GetRecord(path, url.query, rng, status, sent,
                                                          self._t0, self._t1, time.monotonic(),
                                                          fault.kind if fault is not None else ""))

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

            def finish(self) -> None:
                try:
                    super().finish()
                finally:
                    up = getattr(self, "_up", None)
                    if up is not None:
                        up.close()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="swarm-test-proxy", daemon=True)

    def set_rate(self, rate: float | None) -> None:
        self.bucket.rate = rate

    def _fault_request(self, method: str, raw_path: str, rng: str) -> FaultRequest:
        url = urllib.parse.urlsplit(raw_path)
        path = urllib.parse.unquote(url.path)
        key = (method, path, url.query, rng)
        with self.stats.lock:
            attempt = self._seen.get(key, 0)
            self._seen[key] = attempt + 1
            distinct = self._distinct.setdefault(key, len(self._distinct))
            ordinal = self._ordinal
            self._ordinal += 1
        return FaultRequest(method, path, url.query, rng, attempt, distinct, ordinal)

    def __enter__(self) -> "CountingProxy":
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def __exit__(self, *exc) -> None:
        self.close()


def s3_uri(port: int, bucket: str, prefix: str) -> str:
    return f"s3://{bucket}/{prefix}?endpoint_override=127.0.0.1:{port}&scheme=http"


# ------------------------------------------------------------------------------------------------
# processes and memory


def is_stopped(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except OSError:
        return False


def sigcont(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


_MAPS_RE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(.*)$")


def file_mapped_at(address: int) -> str | None:
    """The file this process maps at ``address`` (``/proc/self/maps``), or None."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        m = _MAPS_RE.match(line)
        if m and int(m.group(1), 16) <= address < int(m.group(2), 16):
            return m.group(3) or None
    return None


# ------------------------------------------------------------------------------------------------
# a rogue peer built from modeldist's own pieces: real gRPC control plane, real TCP data plane


class RoguePeer:
    """Registers with the scheduler like an agent and serves a model over the real TCP transport,
    but flips one byte of every piece it sends. As a stripe root it reports the *true* digests
    (blake3 of the origin's bytes), so the lie is in the data only.

    Reads the true pieces from ``origin_dir`` with the manifest its assignment carries.

    ``corrupt=False`` makes it an honest seed; ``hold_digests=True`` makes it serve its pieces at
    once but report their digests only after ``release_digests()`` or its first re-plan (an
    assignment with epoch > 0): a seed whose digests are late.
    """

    def __init__(self, scheduler: str, origin_dir: Path, *, node_id: str = "rogue", upload_bps: float = 1e12,
                 corrupt: bool = True, hold_digests: bool = False):
        import queue

        import grpc

        from modeldist.proto import pb, pb_grpc
        from modeldist.transport.base import get_transport

        self._pb = pb
        self._grpc = grpc
        self.node_id = node_id
        self.corrupt = corrupt
        self.hold_digests = hold_digests
        self.digests_released = threading.Event()
        self._held: list = []
        self.origin_dir = Path(origin_dir)
        self.manifest = None
        self.model = ""
        self.assigned = threading.Event()
        self.cancelled: list[str] = []
        self.assignments: list = []
        self.served: list[tuple[str, int]] = []  # (child, piece) for every piece sent
        self.sent_bytes = 0
        self.auth_refused = 0
        self._lock = threading.Lock()
        self._out: "queue.Queue" = queue.Queue()
        self._queue_mod = queue
        self._stop = threading.Event()
        self.listener = get_transport("tcp").listen("127.0.0.1:0", self._authorize)
        try:
            self.channel = grpc.insecure_channel(scheduler)
            self.stub = pb_grpc.SchedulerStub(self.channel)
            spec = pb.NodeSpec(node_id=node_id, data_addr=self.listener.address, upload_bps=upload_bps,
                               transports=["tcp"])
            self.stub.Register(pb.RegisterRequest(node=spec), timeout=10)
            self.report_call = self.stub.Report.future(self._reports())
            self.join_call = self.stub.Join(pb.JoinRequest(node_id=node_id))
            self._join_thread = threading.Thread(target=self._read_join, name="swarm-rogue-join", daemon=True)
            self._join_thread.start()
        except BaseException:
            self.listener.close()
            raise

    # --- control plane ------------------------------------------------------------------------

    def _reports(self):
        pb = self._pb
        while not self._stop.is_set():
            try:
                msg = self._out.get(timeout=0.3)
            except self._queue_mod.Empty:
                msg = pb.ProgressReport(node_id=self.node_id, heartbeat=True)
            yield msg

    def _read_join(self) -> None:
        try:
            for upd in self.join_call:
                kind = upd.WhichOneof("kind")
                if kind == "assignment":
                    self._on_assignment(upd.assignment)
                elif kind == "cancel":
                    self.cancelled.append(upd.cancel.reason)
        except self._grpc.RpcError:
            pass

    def _on_assignment(self, a) -> None:
        import blake3

        from modeldist.manifest import Manifest

        pb = self._pb
        self.assignments.append(a)
        if a.manifest_json:
            self.manifest = Manifest.from_json(a.manifest_json)
            self.model = a.model
        if self.manifest is None or a.model != self.model:
            return
        n, k = len(self.manifest.pieces), a.stripes
        mine = [p.stripe for p in a.parents if p.origin]
        indices = [i for s in mine for i in range(s, n, k)]
        if indices:
            blob = b"".join(blake3.blake3(self.true_piece(i)).digest() for i in indices)
            msg = pb.ProgressReport(node_id=self.node_id, model=self.model, have=indices,
                                    digests=pb.Digests(model=self.model, indices=indices, digests=blob),
                                    bytes_from_origin=sum(self.manifest.pieces[i].length for i in indices))
            with self._lock:
                if self.hold_digests and not self.digests_released.is_set():
                    self._held.append(msg)
                else:
                    self._out.put(msg)
        self.assigned.set()
        if self.hold_digests and a.epoch > 0:
            self.release_digests()

    def release_digests(self) -> None:
        with self._lock:
            self.digests_released.set()
            held, self._held = self._held, []
        for msg in held:
            self._out.put(msg)

    # --- data plane -----------------------------------------------------------------------------

    def true_piece(self, i: int) -> bytes:
        p = self.manifest.pieces[i]
        with open(self.origin_dir / p.file, "rb") as fh:
            fh.seek(p.offset)
            return fh.read(p.length)

    def _authorize(self, hello, peer):
        from modeldist.errors import AuthError

        self.assigned.wait(10)
        if hello.model != self.model:  # a rogue serves anyone who asks for its model
            with self._lock:
                self.auth_refused += 1
            raise AuthError(f"rogue: unknown model from {hello.node_id}")
        return _CorruptSource(self, hello.node_id)

    def close(self) -> None:
        self._stop.set()
        try:
            self.join_call.cancel()
        except Exception:  # noqa: BLE001
            pass
        try:
            self.report_call.result(timeout=5)
        except Exception:  # noqa: BLE001 - the stream ends either way
            pass
        self._join_thread.join(timeout=5)
        self.listener.close()
        self.channel.close()

    def __enter__(self) -> "RoguePeer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _CorruptSource:
    """PieceSource of the rogue: true length, one byte flipped in the middle of every piece
    (unless the peer is an honest one, ``corrupt=False``)."""

    def __init__(self, rogue: RoguePeer, child: str):
        self.rogue = rogue
        self.child = child

    def piece_count(self) -> int:
        return len(self.rogue.manifest.pieces)

    def piece_length(self, index: int) -> int:
        return self.rogue.manifest.pieces[index].length

    def wait_piece(self, index: int, timeout: float):
        data = bytearray(self.rogue.true_piece(index))
        if data and self.rogue.corrupt:
            data[len(data) // 2] ^= 0xFF
        with self.rogue._lock:
            self.rogue.served.append((self.child, index))
        return memoryview(data)

    def sent(self, nbytes: int, transport: str) -> None:
        with self.rogue._lock:
            self.rogue.sent_bytes += nbytes
