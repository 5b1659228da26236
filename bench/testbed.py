"""The network testbed (DESIGN section 10): hosts in network namespaces, shaped links, an S3 origin.

``Testbed(nodes=N, rate_bps=R)`` builds, on this one machine and as root:

- one network namespace per host: ``<prefix>-o`` (the origin) and ``<prefix>-n0`` .. ``-n<N-1>``,
  plus ``<prefix>-br`` holding a Linux bridge, so nothing is added to the host's own network;
- one veth pair per host, ``eth0`` in the host's namespace and ``p<i>`` (``po`` for the origin) in
  the bridge's, created directly inside those namespaces;
- addresses from a private subnet (``10.77.0.0/24``) that exists only inside these namespaces:
  there is no route to anything else, and the root namespace cannot reach them either;
- a ``tbf`` qdisc on BOTH ends of every veth pair: egress of ``eth0`` caps the host's upload,
  egress of its bridge port caps its download, each at the host's rate (``overrides`` per node);
- loopback up everywhere.

``run(ns, argv)`` starts a process inside a namespace (``ip netns exec``) in its own process group
and tracks it; ``close()`` (the context manager's exit, an ``atexit`` hook, and SIGTERM/SIGHUP
handlers while a testbed is open) terminates every tracked process group, kills whatever is still
inside the namespaces (``ip netns pids``), deletes the namespaces (which removes the veths and the
bridge) and the work folder under ``/dev/shm``. All names start with ``<prefix>`` =
``mdtb-<pid>-<k>``: ``cleanup(prefix)`` removes leftovers of one testbed, ``cleanup_stale()`` those of
testbeds whose process is gone (e.g. after a SIGKILL). Every wait has a deadline.

The origin is moto's S3 server run inside the origin namespace (``start_s3``). Stock moto reads the
whole object for every ranged GET (``FakeKey.value``), so a 1 MiB range of a 64 MiB shard costs
tens of milliseconds of the origin's CPU, and the benchmark would measure moto rather than the
network. ``python bench/testbed.py moto --fast-range`` (the default of ``start_s3``) runs the same
moto server with one patch: a single-range GET copies only the requested bytes, as real object
stores do. Everything else (listing, HEAD, auth, full GETs) is moto's own.

Also a small command line, for the pieces that must run inside a namespace:
``moto`` (the server), ``upload`` (boto3: a folder -> bucket/prefix), ``stage-wait`` (start a
broadcast on the scheduler and wait for it, one JSON line per event) and ``cleanup``.
"""

from __future__ import annotations

import argparse
import atexit
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Mapping, Sequence

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
THIS = Path(__file__).resolve()

__all__ = ["Testbed", "TestbedError", "cleanup", "cleanup_stale", "list_namespaces", "netns_available",
           "ROOT_PREFIX", "SUBNET", "S3_BUCKET", "aws_env", "s3_uri", "parse_rate"]

ROOT_PREFIX = "mdtb"
SUBNET = "10.77.0"          # /24, only ever configured inside our own namespaces
ORIGIN_HOST = 2             # 10.77.0.2
FIRST_NODE_HOST = 10        # node i: 10.77.0.(10 + i)
MAX_NODES = 240
S3_BUCKET = "mdtb-models"
S3_PORT = 9000
_counter = itertools.count()
_live: "set[Testbed]" = set()
_live_lock = threading.Lock()


class TestbedError(RuntimeError):
    """The testbed could not be built or a process in it did not behave."""

    __test__ = False  # not a pytest test class


# ----------------------------------------------------------------------------------------------
# helpers


def _ip(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return _cmd(["ip", *args], check=check, timeout=timeout)


def _cmd(argv: Sequence[str], *, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise TestbedError(f"{' '.join(argv)}: no answer within {timeout:.0f}s") from exc
    if check and r.returncode != 0:
        raise TestbedError(f"{' '.join(argv)}: {r.stderr.strip() or r.stdout.strip()} (exit {r.returncode})")
    return r


def netns_available() -> tuple[bool, str]:
    """(ok, reason): root, iproute2, and permission to create a namespace."""
    if os.geteuid() != 0:
        return False, "the network testbed needs root (network namespaces, tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return False, f"the network testbed needs iproute2 ({tool} not found)"
    return True, ""


def list_namespaces() -> list[str]:
    r = _ip("netns", "list", check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def _ns_pids(ns: str) -> list[int]:
    r = _ip("netns", "pids", ns, check=False, timeout=10)
    return [int(x) for x in r.stdout.split() if x.isdigit()]


def _owned(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + "-")


def cleanup(prefix: str) -> list[str]:
    """Remove every namespace named ``prefix`` or ``prefix-*`` (killing the processes inside them:
    all of them were started by the testbed) and the work folders ``/dev/shm/<prefix>*``.
    Returns the namespaces removed. Safe to call any number of times."""
    if not prefix or not prefix.startswith(ROOT_PREFIX + "-"):
        raise ValueError(f"refusing to clean up {prefix!r}: testbed prefixes start with {ROOT_PREFIX}-")
    mine = [ns for ns in list_namespaces() if _owned(ns, prefix)]
    for ns in mine:
        for pid in _ns_pids(ns):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for ns in mine:
        _ip("netns", "del", ns, check=False, timeout=30)
    for p in Path("/dev/shm").glob(prefix + "*"):
        if _owned(p.name, prefix):
            shutil.rmtree(p, ignore_errors=True)
    return mine


def cleanup_stale() -> list[str]:
    """Remove the leftovers (namespaces, ``/dev/shm/mdtb-<pid>-*``) of processes that no longer exist."""
    removed = []
    pids = set()
    for name in list_namespaces() + [p.name for p in Path("/dev/shm").glob(ROOT_PREFIX + "-*")]:
        m = re.match(rf"^{ROOT_PREFIX}-(\d+)-", name)
        if m:
            pids.add(int(m.group(1)))
    for pid in sorted(pids):
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue  # its owner is alive: not ours to touch
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        removed += cleanup(f"{ROOT_PREFIX}-{pid}")
    return removed


def parse_rate(value: str | int | float) -> float:
    """``200mbit``, ``200M``, ``1gbit``, ``2e8`` -> bits per second."""
    if isinstance(value, (int, float)):
        return float(value)
    m = re.fullmatch(r"\s*([\d.eE+]+)\s*([kmgt]?)(bit|bps|b)?\s*", str(value), re.IGNORECASE)
    if not m:
        raise ValueError(f"not a rate: {value!r} (examples: 200mbit, 1gbit, 2e8)")
    return float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[m.group(2).lower()]


def aws_env() -> dict[str, str]:
    """What boto3/pyarrow need to talk to the moto origin (dummy credentials, no metadata service)."""
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true"}


def s3_uri(bucket: str, prefix: str, endpoint: str) -> str:
    return f"s3://{bucket}/{prefix}?endpoint_override={endpoint}&scheme=http"


def _clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MODELDIST_") and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(ROOT), env.get("PYTHONPATH", "")) if x)
    env.update(aws_env())
    env.update(extra or {})
    return env


# ----------------------------------------------------------------------------------------------
# the testbed


class Testbed:
    """N+1 hosts in network namespaces on one bridge, every link shaped both ways (see the module doc)."""

    __test__ = False

    def __init__(self, nodes: int, rate_bps: float, overrides: Mapping[int, float] | None = None,
                 prefix: str | None = None, *, origin_rate_bps: float | None = None, latency_ms: float = 20.0,
                 burst_bytes: int | None = None, mtu: int = 1500, workdir_root: str = "/dev/shm",
                 keep_logs: str | os.PathLike | None = None, logs_on_error: str | os.PathLike | None = None,
                 nice: int = 0):
        ok, why = netns_available()
        if not ok:
            raise TestbedError(why)
        if not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"nodes must be 1..{MAX_NODES}")
        if not rate_bps > 0:
            raise ValueError("rate_bps must be > 0")
        self.n = nodes
        self.rate_bps = float(rate_bps)
        self.overrides = {int(k): float(v) for k, v in (overrides or {}).items()}
        for i, r in self.overrides.items():
            if not (0 <= i < nodes and r > 0):
                raise ValueError(f"bad override {i}: {r}")
        self.origin_rate_bps = float(origin_rate_bps or rate_bps)
        self.prefix = prefix or f"{ROOT_PREFIX}-{os.getpid()}-{next(_counter)}"
        if not self.prefix.startswith(ROOT_PREFIX + "-") or not re.fullmatch(r"[A-Za-z0-9-]+", self.prefix):
            raise ValueError(f"prefix must start with {ROOT_PREFIX}- and use letters, digits and '-'")
        self.latency_ms = latency_ms
        self.burst_bytes = burst_bytes
        self.mtu = mtu
        self.bridge_ns = f"{self.prefix}-br"
        self.origin_ns = f"{self.prefix}-o"
        self.node_ns = [f"{self.prefix}-n{i}" for i in range(nodes)]
        self.workdir = Path(workdir_root) / self.prefix
        self.procs: list[subprocess.Popen] = []
        self._names: dict[int, str] = {}
        self._closed = False
        self._closing = False
        self._old_handlers: dict[int, object] = {}
        self.s3_endpoint: str | None = None
        #: where the logs folder is copied on close (None: deleted with everything else)
        self.keep_logs = Path(keep_logs) if keep_logs else None
        #: where the logs folder is copied when the ``with`` block ends with an exception
        self.logs_on_error = Path(logs_on_error) if logs_on_error else None
        #: niceness of every process started with ``run`` (negative: ahead of other work on a shared machine)
        self.nice = int(nice)

    # --- addresses and names ----------------------------------------------------------------

    def rate_of(self, i: int | str) -> float:
        if i == "origin":
            return self.origin_rate_bps
        return self.overrides.get(int(i), self.rate_bps)

    def addr(self, i: int | str) -> str:
        """The IPv4 address of node ``i`` (0..N-1) or of ``"origin"``."""
        if i == "origin":
            return f"{SUBNET}.{ORIGIN_HOST}"
        i = int(i)
        if not 0 <= i < self.n:
            raise IndexError(f"no node {i} (0..{self.n - 1})")
        return f"{SUBNET}.{FIRST_NODE_HOST + i}"

    @property
    def origin_addr(self) -> str:
        return self.addr("origin")

    def ns(self, i: int | str) -> str:
        """The namespace name of node ``i``, ``"origin"``, ``"bridge"``, or a full name given as is."""
        if i == "origin":
            return self.origin_ns
        if i == "bridge":
            return self.bridge_ns
        if isinstance(i, int):
            return self.node_ns[i]
        if isinstance(i, str) and i.isdigit():
            return self.node_ns[int(i)]
        if isinstance(i, str) and _owned(i, self.prefix):
            return i
        raise ValueError(f"not a namespace of this testbed: {i!r}")

    def namespaces(self) -> list[str]:
        return [self.bridge_ns, self.origin_ns, *self.node_ns]

    # --- build ---------------------------------------------------------------------------------

    def __enter__(self) -> "Testbed":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self.logs_on_error is not None and self.keep_logs is None:
            self.keep_logs = self.logs_on_error
            print(f"testbed {self.prefix}: {exc_type.__name__}; logs kept in {self.keep_logs / self.prefix}",
                  file=sys.stderr)
        self.close()

    def start(self) -> "Testbed":
        with _live_lock:
            _live.add(self)
        self._install_handlers()
        try:
            cleanup_stale()
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _tbf(self, ns: str, dev: str, rate_bps: float) -> None:
        rate_Bps = rate_bps / 8
        # GSO packets of up to 64 KiB must fit the bucket whole (else tbf segments them in software);
        # 10 ms worth of bytes above that is still a short burst at these rates
        burst = self.burst_bytes or max(128 << 10, int(rate_Bps * 0.010))
        _ip("netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
            "rate", f"{int(rate_bps)}bit", "burst", str(burst), "latency", f"{self.latency_ms:g}ms")

    def _build(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for ns in self.namespaces():
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_ns, "link", "set", "br0", "up")
        hosts: list[tuple[int | str, str, str]] = [("origin", self.origin_ns, "po")]
        hosts += [(i, self.node_ns[i], f"p{i}") for i in range(self.n)]
        for key, ns, port in hosts:
            _ip("link", "add", "name", "eth0", "netns", ns, "mtu", str(self.mtu), "type", "veth",
                "peer", "name", port, "netns", self.bridge_ns, "mtu", str(self.mtu))
            _ip("-n", self.bridge_ns, "link", "set", port, "master", "br0")
            _ip("-n", self.bridge_ns, "link", "set", port, "up")
            _ip("-n", ns, "addr", "add", f"{self.addr(key)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            rate = self.rate_of(key)
            self._tbf(ns, "eth0", rate)                 # the host's upload
            self._tbf(self.bridge_ns, port, rate)       # the host's download
        # a quiet, deterministic L2: no IPv6 chatter (DAD, router solicitations) on the shaped links
        for ns in self.namespaces():
            _cmd(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"], check=False)

    def describe(self) -> dict:
        """The links as configured (for results files): qdisc lines per namespace."""
        out = {}
        for ns in [self.origin_ns, *self.node_ns, self.bridge_ns]:
            out[ns] = _cmd(["tc", "-n", ns, "qdisc", "show"], check=False).stdout.strip().splitlines()
        return out

    def qdisc_drops(self) -> dict[str, int]:
        """Dropped packets per tbf (host eth0 = upload, bridge port = download) since the build."""
        drops: dict[str, int] = {}
        for ns in [self.origin_ns, *self.node_ns, self.bridge_ns]:
            text = _cmd(["tc", "-n", ns, "-s", "qdisc", "show"], check=False).stdout
            for m in re.finditer(r"qdisc tbf \S+ dev (\S+) .*?\n\s*Sent \d+ bytes \d+ pkt \(dropped (\d+)", text):
                drops[f"{ns}:{m.group(1)}"] = int(m.group(2))
        return drops

    # --- processes -----------------------------------------------------------------------------

    def run(self, ns: int | str, argv: Sequence[str], *, log: str | os.PathLike | None = None,
            env: Mapping[str, str] | None = None, name: str | None = None, **popen_kwargs) -> subprocess.Popen:
        """Start ``argv`` inside namespace ``ns`` (node index, "origin", or a full name), in its own
        process group, tracked for teardown. ``log``: a file for stdout and stderr. ``env`` is added
        to a clean copy of this environment (no MODELDIST_*, AWS dummy credentials, PYTHONPATH)."""
        if self._closed or self._closing:
            raise TestbedError("testbed is closed")
        full = ["ip", "netns", "exec", self.ns(ns), *(["nice", "-n", str(self.nice)] if self.nice else []),
                *map(str, argv)]
        popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
        popen_kwargs.setdefault("start_new_session", True)
        popen_kwargs["env"] = _clean_env(env)
        fh = None
        if log is not None:
            Path(log).parent.mkdir(parents=True, exist_ok=True)
            fh = open(log, "ab")
            popen_kwargs.setdefault("stdout", fh)
            popen_kwargs.setdefault("stderr", subprocess.STDOUT)
        try:
            p = subprocess.Popen(full, **popen_kwargs)
        finally:
            if fh is not None:
                fh.close()
        self.procs.append(p)
        if name:
            self._names[p.pid] = name
        return p

    def run_checked(self, ns: int | str, argv: Sequence[str], *, timeout: float, env=None) -> str:
        """Run to completion inside ``ns``; return stdout; raise with the output if it fails or overruns."""
        p = self.run(ns, argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(p)
            raise TestbedError(f"{' '.join(map(str, argv))} in {self.ns(ns)}: still running after {timeout:.0f}s")
        text = out.decode(errors="replace")
        if p.returncode != 0:
            raise TestbedError(f"{' '.join(map(str, argv))} in {self.ns(ns)} failed ({p.returncode}):\n{text[-4000:]}")
        return text

    def stop(self, p: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 5.0) -> int | None:
        """Signal ``p``'s process group, wait up to ``grace`` s, then SIGKILL it."""
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        return p.returncode

    def kill(self, p: subprocess.Popen) -> None:
        """kill -9 of the process itself (a crash, as seen by its peers)."""
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=10)

    def wait_listening(self, ns: int | str, host: str, port: int, timeout: float = 30.0,
                       proc: subprocess.Popen | None = None) -> None:
        """Until a TCP connect to host:port succeeds from inside ``ns`` (bash /dev/tcp; no extra tools)."""
        deadline = time.monotonic() + timeout
        while True:
            r = _cmd(["ip", "netns", "exec", self.ns(ns), "timeout", "2", "bash", "-c",
                      f"exec 3<>/dev/tcp/{host}/{port}"], check=False, timeout=10)
            if r.returncode == 0:
                return
            if proc is not None and proc.poll() is not None:
                raise TestbedError(f"process {proc.pid} exited ({proc.returncode}) before {host}:{port} listened")
            if time.monotonic() > deadline:
                raise TestbedError(f"nothing listening on {host}:{port} (from {self.ns(ns)}) after {timeout:.0f}s")
            time.sleep(0.1)

    # --- the S3 origin ------------------------------------------------------------------------

    def start_s3(self, *, port: int = S3_PORT, fast_range: bool = True, timeout: float = 60.0) -> str:
        """moto's S3 server in the origin namespace; returns its endpoint ``host:port``."""
        argv = [PYTHON, str(THIS), "moto", "--host", self.origin_addr, "--port", str(port)]
        if not fast_range:
            argv.append("--stock")
        p = self.run("origin", argv, log=self.workdir / "logs" / "moto.log", name="moto")
        self.wait_listening("origin", self.origin_addr, port, timeout=timeout, proc=p)
        self.s3_endpoint = f"{self.origin_addr}:{port}"
        return self.s3_endpoint

    def upload(self, folder: str | os.PathLike, key_prefix: str, *, bucket: str = S3_BUCKET,
               timeout: float = 300.0) -> str:
        """Put every file of ``folder`` into ``bucket/key_prefix/`` (from inside the origin namespace,
        so it does not cross a shaped link); returns the ``s3://`` source URI for modeldist."""
        if self.s3_endpoint is None:
            raise TestbedError("start_s3() first")
        self.run_checked("origin", [PYTHON, str(THIS), "upload", "--endpoint", f"http://{self.s3_endpoint}",
                                    "--bucket", bucket, "--prefix", key_prefix, "--dir", str(folder)],
                         timeout=timeout)
        return s3_uri(bucket, key_prefix, self.s3_endpoint)

    def object_urls(self, folder: str | os.PathLike, key_prefix: str, *, bucket: str = S3_BUCKET) -> list[tuple[str, str]]:
        """(relative path, plain http URL) of every file of ``folder`` as uploaded by ``upload``."""
        base = Path(folder)
        out = []
        for p in sorted(base.rglob("*")):
            if p.is_file():
                rel = p.relative_to(base).as_posix()
                out.append((rel, f"http://{self.s3_endpoint}/{bucket}/{key_prefix}/{rel}"))
        return out

    # --- teardown ------------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed or self._closing:
            return
        self._closing = True
        try:
            live = [p for p in self.procs if p.poll() is None]
            for p in live:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.monotonic() + 5
            for p in live:
                try:
                    p.wait(timeout=max(0.05, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            for p in live:
                if p.poll() is None:
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                    try:
                        p.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        pass
            if self.keep_logs is not None and (self.workdir / "logs").is_dir():
                dest = self.keep_logs / self.prefix
                shutil.copytree(self.workdir / "logs", dest, dirs_exist_ok=True)
            cleanup(self.prefix)  # whatever is still in our namespaces, the namespaces, the work folder
            left = [ns for ns in list_namespaces() if _owned(ns, self.prefix)]
            if left:
                raise TestbedError(f"namespaces left behind: {left}")
        finally:
            self._closed = True
            self._closing = False
            with _live_lock:
                _live.discard(self)
            self._restore_handlers()

    # --- signals -------------------------------------------------------------------------------

    def _install_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGHUP):
            try:
                self._old_handlers[sig] = signal.getsignal(sig)
                signal.signal(sig, _on_signal)
            except (ValueError, OSError):
                pass

    def _restore_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        with _live_lock:
            others = bool(_live)
        if others:
            return
        for sig, h in self._old_handlers.items():
            try:
                signal.signal(sig, h if h is not None else signal.SIG_DFL)
            except (ValueError, OSError, TypeError):
                pass
        self._old_handlers.clear()


def _close_all() -> None:
    with _live_lock:
        beds = list(_live)
    for tb in beds:
        try:
            tb.close()
        except Exception as exc:  # noqa: BLE001 - at exit: report, keep going
            print(f"testbed {tb.prefix}: cleanup failed: {exc}", file=sys.stderr)


def _on_signal(signum, frame) -> None:
    # close now (a second signal during the close is ignored by close's own guard), then exit
    # with the conventional status; `finally` blocks above us still run, harmlessly
    _close_all()
    raise SystemExit(128 + signum)


atexit.register(_close_all)


# ----------------------------------------------------------------------------------------------
# moto with O(range) ranged GETs


def _patch_moto_ranges() -> None:
    """Single-range GETs copy only the requested bytes out of the key's buffer.

    moto's ``get_object`` returns ``key.value`` (a full copy of the object) and
    ``_handle_range_header`` slices it. While a simple ``bytes=a-b`` GET is being served, the patched
    ``FakeKey.value`` returns a view that reads only the slice asked for; anything that is not
    sliced (multi-range, odd headers) is materialised to the full bytes, as before.
    """
    from moto.s3 import models, responses

    tl = threading.local()
    orig_value = models.FakeKey.value
    orig_key_response = responses.S3Response.key_response

    class _LazyValue:
        __slots__ = ("key",)

        def __init__(self, key):
            self.key = key

        def __len__(self) -> int:
            return self.key.size

        def __bool__(self) -> bool:
            return self.key.size > 0

        def __getitem__(self, s):
            if not isinstance(s, slice):
                raise TypeError("only slices")
            start, stop, _ = s.indices(self.key.size)
            with self.key.lock:
                buf = self.key._value_buffer
                buf.seek(start)
                return buf.read(max(0, stop - start))

        def full(self) -> bytes:
            return orig_value.fget(self.key)

    def value(self):
        if getattr(tl, "lazy", False):
            return _LazyValue(self)
        return orig_value.fget(self)

    simple = re.compile(r"^\s*bytes=\d+-\d*\s*$")

    def key_response(self, request, full_url, headers):
        rng = request.headers.get("range") or ""
        tl.lazy = request.method == "GET" and bool(simple.match(rng))
        try:
            resp = orig_key_response(self, request, full_url, headers)
        finally:
            tl.lazy = False
        if isinstance(resp, tuple) and len(resp) == 3 and isinstance(resp[2], _LazyValue):
            resp = (resp[0], resp[1], resp[2].full())
        return resp

    models.FakeKey.value = property(value, orig_value.fset)
    responses.S3Response.key_response = key_response


def _moto_main(args) -> None:
    # keep objects in memory (moto spills keys over 5 MiB to temporary files on disk otherwise)
    os.environ.setdefault("MOTO_S3_DEFAULT_KEY_BUFFER_SIZE", str(1 << 40))
    if not args.stock:
        _patch_moto_ranges()
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log line per ranged GET
    from moto.server import main

    main(["-H", args.host, "-p", str(args.port)])


def _upload_main(args) -> None:
    import boto3
    from boto3.s3.transfer import TransferConfig

    s3 = boto3.client("s3", endpoint_url=args.endpoint)
    deadline = time.monotonic() + args.wait
    while True:
        try:
            s3.create_bucket(Bucket=args.bucket)
            break
        except s3.exceptions.BucketAlreadyOwnedByYou:
            break
        except Exception as exc:  # noqa: BLE001 - server still starting
            if time.monotonic() > deadline:
                raise SystemExit(f"upload: {args.endpoint} not answering: {exc}")
            time.sleep(0.2)
    base = Path(args.dir)
    cfg = TransferConfig(multipart_threshold=1 << 40)  # one PUT per file: plain single-part objects
    n = 0
    for p in sorted(base.rglob("*")):
        if p.is_file():
            s3.upload_file(str(p), args.bucket, f"{args.prefix}/{p.relative_to(base).as_posix()}", Config=cfg)
            n += 1
    print(json.dumps({"uploaded": n, "bucket": args.bucket, "prefix": args.prefix}), flush=True)


def _stage_wait_main(args) -> None:
    """Start a broadcast and wait for it; events as JSON lines on stdout (the caller is outside the
    namespaces and cannot reach the scheduler itself)."""
    from dataclasses import asdict

    from modeldist.cluster import get_status, start_stage, wait_model
    from modeldist.errors import ModelDistError

    def emit(**kw) -> None:
        sys.stdout.write(json.dumps(kw) + "\n")
        sys.stdout.flush()

    try:
        deadline = time.monotonic() + args.register_timeout
        while True:
            try:
                st = get_status(args.scheduler, timeout=5)
                alive = sum(1 for n in st.nodes if n[2])
                if alive >= args.expect:
                    break
            except ModelDistError:
                alive = 0
            if time.monotonic() > deadline:
                emit(event="error", message=f"only {alive} of {args.expect} agents registered "
                                             f"within {args.register_timeout:.0f}s")
                sys.exit(1)
            time.sleep(0.1)
        emit(event="registered", nodes=alive, t=time.time())
        t0 = time.time()
        model, n, total = start_stage(args.scheduler, args.source, piece_size=args.piece_size, timeout=120)
        emit(event="started", model=model, nodes=n, total_bytes=total, t=t0, t_reply=time.time())
        st = get_status(args.scheduler, model, timeout=10)
        row = next((m for m in st.models if m.model == model), None)
        if row is not None:
            emit(event="plan", stripes=row.stripes, pieces=row.pieces,
                 parents={x.node_id: list(x.parents) for x in row.nodes})

        last = [0.0]

        def progress(row) -> None:
            now = time.monotonic()
            if args.progress and now - last[0] >= args.progress:
                last[0] = now
                emit(event="progress", t=time.time(), have={x.node_id: x.have for x in row.nodes},
                     state={x.node_id: x.state for x in row.nodes})

        row = wait_model(args.scheduler, model, timeout=args.timeout, on_update=progress, poll=0.1)
        emit(event="done", t=time.time(), row=asdict(row))
    except ModelDistError as exc:
        emit(event="error", message=f"{type(exc).__name__}: {exc}")
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="network testbed helpers (run inside a namespace)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("moto", help="moto's S3 server (ranged GETs in O(range) unless --stock)")
    m.add_argument("--host", required=True)
    m.add_argument("--port", type=int, default=S3_PORT)
    m.add_argument("--stock", action="store_true", help="moto as shipped (a full copy per ranged GET)")
    u = sub.add_parser("upload", help="upload a folder to bucket/prefix with boto3")
    u.add_argument("--endpoint", required=True)
    u.add_argument("--bucket", default=S3_BUCKET)
    u.add_argument("--prefix", required=True)
    u.add_argument("--dir", required=True)
    u.add_argument("--wait", type=float, default=60.0)
    s = sub.add_parser("stage-wait", help="start a broadcast on the scheduler and wait for it")
    s.add_argument("--scheduler", required=True)
    s.add_argument("--source", required=True)
    s.add_argument("--expect", type=int, required=True, help="agents that must be registered first")
    s.add_argument("--piece-size", type=int, default=0)
    s.add_argument("--timeout", type=float, default=600.0)
    s.add_argument("--register-timeout", type=float, default=120.0)
    s.add_argument("--progress", type=float, default=0.0, help="emit progress every S seconds (0 = never)")
    c = sub.add_parser("cleanup", help="remove testbed leftovers")
    c.add_argument("--prefix", help="one testbed's prefix (mdtb-<pid>-<k>); default: every stale one")
    args = ap.parse_args(argv)
    if args.cmd == "moto":
        _moto_main(args)
    elif args.cmd == "upload":
        _upload_main(args)
    elif args.cmd == "stage-wait":
        _stage_wait_main(args)
    elif args.cmd == "cleanup":
        removed = cleanup(args.prefix) if args.prefix else cleanup_stale()
        print("\n".join(removed) if removed else "nothing to remove")


if __name__ == "__main__":
    main()
