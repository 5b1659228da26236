#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris / libFuzzer) of modeldist's parsers of untrusted bytes.

Targets: the TCP data-plane wire format (``modeldist/transport/tcp/wire.py``: ``hello``, ``reply``,
``request``, ``frame``, ``qp_info``) and the safetensors header / index / manifest JSON parsers
(``modeldist/manifest.py``: ``header``, ``index``, ``manifest``). Every input must end in a result
or a ``ModelDistError`` subclass; anything else is a *finding*, as is a result that breaks the
target's oracle (re-encoding a parsed frame gives the bytes it was parsed from; a manifest file
name is relative and normalised; ``from_json(to_json(m)) == m``) or an input taking over
``--slow`` seconds. Findings are counted, printed once per distinct (type, place) and their inputs
saved, and fuzzing goes on.

    python tests/fuzz/fuzz_wire.py --target hello --seconds 60
    python tests/fuzz/fuzz_wire.py --target all --seconds 60        # each target in turn
    python tests/fuzz/fuzz_wire.py --target request --runs 100000
    python tests/fuzz/fuzz_wire.py --target header --repro crash-input.bin
    python tests/fuzz/fuzz_wire.py --target hello --seconds 10 --engine random   # no atheris

Each target runs in a child process (libFuzzer ends the process itself when ``-max_total_time``
or ``-runs`` is reached); the parent prints the summary: inputs tried (libFuzzer's own count),
coverage, findings. Exit status 1 when there is a finding. ``--engine random`` (used
automatically when atheris cannot be imported) runs the same targets on random mutations of the
same seeds, without coverage feedback.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import random
import re
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # import modeldist from this checkout

INSTRUMENTED = ["modeldist.transport.tcp.wire", "modeldist.manifest", "modeldist.security"]


class OracleError(AssertionError):
    """A parse that succeeded but returned something wrong."""


@dataclass
class Target:
    name: str
    fn: Callable[[bytes], object]
    seeds: list[bytes]
    max_len: int
    doc: str = ""


class Feed:
    """``recv_exact`` over a finite buffer: exactly n bytes or TransportError at the end (as the
    socket's does, ``transport/tcp/__init__.py: _recv_exact_fn``)."""

    def __init__(self, data: bytes):
        self.data, self.pos, self.asked = data, 0, 0
        from modeldist.errors import TransportError
        self._err = TransportError

    def __call__(self, n: int) -> bytes:
        if n < 0:
            raise OracleError(f"recv_exact({n})")
        self.asked = max(self.asked, n)
        if self.pos + n > len(self.data):
            self.pos = len(self.data)
            raise self._err("connection closed by peer")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    @property
    def consumed(self) -> bytes:
        return self.data[:self.pos]


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise OracleError(what)


def load_targets(instrument: bool) -> dict[str, Target]:
    """Import the parsers (instrumented for atheris when asked) and build the targets and seeds."""
    if instrument:
        import atheris

        with atheris.instrument_imports(include=INSTRUMENTED):
            import modeldist.manifest as manifest
            import modeldist.security as security
            from modeldist.transport.tcp import wire
    else:
        import modeldist.manifest as manifest
        import modeldist.security as security
        from modeldist.transport.tcp import wire
    from modeldist.transport.base import Hello

    # --- wire -----------------------------------------------------------------------------

    def hello(data: bytes):
        feed = Feed(data)
        h, version, flags = wire.read_hello_flags(feed)
        again = wire.MAGIC + struct.pack("<H", version) + wire.encode_hello(h, flags)[6:]
        _check(again == feed.consumed, "hello: re-encoding differs from the bytes parsed")
        _check(feed.asked <= max(wire.MAX_TOKEN, wire.MAX_NODE_ID, 42), f"hello: read {feed.asked} bytes at once")
        # what the agent's authorizer does next with it: must refuse typed, never crash
        security.check_ticket(b"k" * 32, h.token, h.node_id, h.model)
        return h

    def reply(data: bytes):
        feed = Feed(data)
        status, message = wire.read_reply(feed)
        _check(feed.pos == 7 + struct.unpack("<H", data[5:7])[0] and data[4] == status, "reply: wrong length")
        return status, message

    def request(data: bytes):
        n_pieces = struct.unpack("<I", data[:4].ljust(4, b"\0"))[0]
        feed = Feed(data[4:])
        got = wire.read_request(feed, n_pieces)
        _check(all(0 <= i < n_pieces for i in got), "request: index outside the model")
        _check(wire.encode_request(got) == feed.consumed, "request: re-encoding differs")
        _check(feed.asked <= max(5, 4 * min(wire.MAX_REQUEST, n_pieces)), f"request: read {feed.asked} bytes at once")
        return got

    def frame(data: bytes):
        mask = data[0] if data else 0
        kinds = tuple(k for k in range(1, 8) if mask >> (k - 1) & 1)
        raw = data[1:]
        head = wire.parse_frame_head(raw, kinds)
        _check(head.kind in kinds and head.length <= wire.MAX_PIECE, "frame: kind or length outside the limits")
        _check(wire.FRAME.pack(head.kind, head.index, head.length) == raw, "frame: re-encoding differs")
        return head

    def qp_info(data: bytes):
        feed = Feed(data)
        q = wire.read_qp_info(feed)
        _check(q.qp_num < 1 << 24 and q.psn < 1 << 24 and len(q.gid) == 16, "qp_info: field out of range")
        _check(not q.qp_num or 1 <= q.mtu <= 5, "qp_info: bad mtu accepted")
        _check(wire.encode_qp_info(q)[:-1] == feed.consumed[:-1], "qp_info: re-encoding differs")
        return q

    # --- manifest -------------------------------------------------------------------------

    def safe_path(p: str, what: str) -> None:
        _check(isinstance(p, str) and p and not p.startswith("/") and ".." not in p.split("/")
               and "\\" not in p and "\0" not in p and posixpath.normpath(p) == p,
               f"{what}: unsafe path {p!r} accepted")

    def header(data: bytes):
        n = manifest.header_length(data[:8], len(data), "f")
        entries, metadata = manifest.parse_safetensors_header(data[8:8 + n], len(data), "f")
        cursor = 8 + n
        for t in entries:  # tensors tile the data region exactly, inside the file
            _check(t.start == cursor and t.start <= t.end <= len(data), f"header: tensor {t.name!r} misplaced")
            cursor = t.end
        _check(cursor == len(data), "header: tensors do not cover the data region")
        return entries, metadata

    def index(data: bytes):
        out = manifest.parse_index(data, "sub/model.safetensors.index.json")
        for shard in out.values():
            safe_path(shard, "index")
        return out

    def manifest_json(data: bytes):
        m = manifest.Manifest.from_json(data)
        for f in m.files:
            safe_path(f.path, "manifest file")
        for p in m.pieces:
            safe_path(p.file, "manifest piece")
        for t in m.tensors:
            safe_path(t.file, "manifest tensor")
        for w in m.weight_files:
            safe_path(w, "manifest weight file")
        _check(manifest.Manifest.from_json(m.to_json()) == m, "manifest: from_json(to_json(m)) != m")
        return m

    # --- seeds ----------------------------------------------------------------------------

    model = "ab" * 32
    ticket = security.mint_ticket(b"k" * 32, "node-1", model, ttl=3600)
    hello_seeds = [wire.encode_hello(Hello(model, ticket, "node-1")),
                   wire.encode_hello(Hello(model, b"", "n"), wire.HELLO_RDMA),
                   wire.encode_hello(Hello("00" * 32, b"t" * 40, "ñødé-ü"), 0xFFFF)]
    reply_seeds = [wire.encode_reply(s, m) for s, m in ((wire.OK, ""), (wire.AUTH, "ticket expired"),
                                                          (wire.OK_RDMA, ""), (wire.BUSY, "x" * 300))]
    request_seeds = [struct.pack("<I", n) + wire.encode_request(idx)
                     for n, idx in ((4, [0, 1, 2, 3]), (1, [0]), (100, []), (1 << 20, [7, 99999, 3]))]
    frame_seeds = [bytes([mask]) + wire.FRAME.pack(k, i, n) for mask, k, i, n in
                   ((0b1010, wire.T_PIECE, 3, 4096), (0b1010, wire.T_END, 0, 0),
                    (0b1111110, wire.T_RDMA, 9, wire.MAX_PIECE), (0x7F, wire.T_ACK, 1, 0))]
    qp_seeds = [wire.encode_qp_info(wire.NO_RDMA),
                wire.encode_qp_info(wire.QpInfo(0x1234, 0xABCDE, bytes(range(16)), 7, 5, 16, 2))]

    header_seeds = _safetensors_seeds()
    manifest_seed, index_seed = _manifest_seeds(manifest)

    return {t.name: t for t in (
        Target("hello", hello, hello_seeds, 2048, "wire.read_hello_flags (+ re-encode, + check_ticket)"),
        Target("reply", reply, reply_seeds, 2048, "wire.read_reply"),
        Target("request", request, request_seeds, 1024, "wire.read_request (first 4 bytes: n_pieces)"),
        Target("frame", frame, frame_seeds, 32, "wire.parse_frame_head (first byte: allowed kinds)"),
        Target("qp_info", qp_info, qp_seeds, 64, "wire.read_qp_info"),
        Target("header", header, header_seeds, 8192, "manifest.header_length + parse_safetensors_header"),
        Target("index", index, [index_seed], 8192, "manifest.parse_index"),
        Target("manifest", manifest_json, [manifest_seed], 16384, "Manifest.from_json (+ round trip)"),
    )}


def _safetensors_seeds() -> list[bytes]:
    """Whole safetensors files written by the real ``safetensors`` library."""
    import numpy as np
    import safetensors.numpy

    rng = np.random.default_rng(0)
    files = [
        {"w": rng.standard_normal((3, 5)).astype(np.float32), "b": np.arange(5, dtype=np.int64)},
        {"x": np.zeros((0, 3), np.float16), "s": np.array(True), "u": np.arange(7, dtype=np.uint8)},
        {f"layer.{i}.weight": rng.standard_normal((2, 2)).astype(np.float64) for i in range(4)},
    ]
    seeds = [safetensors.numpy.save(f) for f in files]
    seeds.append(safetensors.numpy.save(files[0], metadata={"format": "pt"}))
    hb = b'{"t":{"dtype":"F4","shape":[2,3],"data_offsets":[0,3]},"__metadata__":{"a":"b"}}'
    seeds.append(struct.pack("<Q", len(hb)) + hb + b"\x12\x34\x56")
    return seeds


def _manifest_seeds(manifest) -> tuple[bytes, bytes]:
    """A manifest built by ``Manifest.build`` over in-memory files (two shards and their index)."""
    import hashlib

    import numpy as np
    import safetensors.numpy

    files = {
        "model-00001-of-00002.safetensors": safetensors.numpy.save({"a": np.ones((64, 64), np.float32)}),
        "model-00002-of-00002.safetensors": safetensors.numpy.save({"b": np.arange(3000, dtype=np.int16)}),
        "config.json": b'{"model_type": "test"}',
    }
    index = json.dumps({"metadata": {"total_size": 22384},
                        "weight_map": {"a": "model-00001-of-00002.safetensors",
                                       "b": "model-00002-of-00002.safetensors"}}).encode()
    files["model.safetensors.index.json"] = index

    @dataclass
    class Listed:
        path: str
        size: int
        sha256: str | None = None
        version: str | None = None

    listing = [Listed(p, len(b), hashlib.sha256(b).hexdigest() if k % 2 else None, None if k % 2 else f"v{k}")
               for k, (p, b) in enumerate(sorted(files.items()))]
    m = manifest.Manifest.build(listing, lambda p, off, n: files[p][off:off + n], source="mem://seed",
                                piece_size=4096)
    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(len(m.pieces))]
    return m.with_digests(digests).to_json(), index


# --- running ------------------------------------------------------------------------------


@dataclass
class Stats:
    target: str
    report: Path | None
    findings_dir: Path
    slow: float
    inputs: int = 0
    findings: dict[str, dict] = field(default_factory=dict)
    _flushed: float = 0.0

    def run_one(self, fn: Callable[[bytes], object], data: bytes) -> None:
        from modeldist.errors import ModelDistError

        self.inputs += 1
        t0 = time.monotonic()
        try:
            fn(data)
        except ModelDistError:
            pass
        except Exception as exc:  # noqa: BLE001 - the whole point: anything else is a finding
            self.finding(exc, data)
        took = time.monotonic() - t0
        if took > self.slow:
            self.finding(TimeoutError(f"one input took {took:.2f}s (limit {self.slow}s)"), data)
        if self.inputs & 1023 == 0 and time.monotonic() - self._flushed > 1.0:
            self.flush()

    def finding(self, exc: BaseException, data: bytes) -> None:
        tb = traceback.extract_tb(exc.__traceback__)
        place = next((f"{Path(f.filename).name}:{f.lineno}" for f in reversed(tb) if "modeldist" in f.filename),
                     f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else "?")
        key = f"{type(exc).__name__} at {place}"
        entry = self.findings.get(key)
        if entry is None:
            self.findings_dir.mkdir(parents=True, exist_ok=True)
            path = self.findings_dir / f"{self.target}-{len(self.findings)}-{type(exc).__name__}.bin"
            path.write_bytes(data)
            entry = self.findings[key] = {"key": key, "message": str(exc)[:300], "count": 0, "input": str(path),
                                          "traceback": "".join(traceback.format_exception(exc))[-3000:]}
            print(f"\n=== FINDING ({self.target}): {key}: {entry['message']}\n    input saved to {path}\n"
                  f"{entry['traceback']}", file=sys.stderr, flush=True)
            self.flush()
        entry["count"] += 1

    def flush(self) -> None:
        self._flushed = time.monotonic()
        if self.report is None:
            return
        tmp = self.report.with_suffix(".tmp")
        tmp.write_text(json.dumps({"inputs": self.inputs, "findings": list(self.findings.values())}))
        os.replace(tmp, self.report)


_INTERESTING = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x3FF, 0x400, 0x401, 0x7FFF, 0xFFFF, 1 << 24, (1 << 31) - 1,
                (1 << 32) - 1, 1 << 30, (1 << 30) + 1, 100_000_000, (1 << 63) - 1, (1 << 64) - 1]


def mutate(rng: random.Random, seeds: list[bytes], max_len: int) -> bytes:
    """One random mutation of a seed (the ``--engine random`` fallback; no coverage feedback)."""
    if rng.random() < 0.05:
        return rng.randbytes(rng.randrange(max_len))
    buf = bytearray(rng.choice(seeds))
    for _ in range(rng.choice((1, 1, 2, 3, 4, 8))):
        op = rng.randrange(9)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[min(pos, len(buf) - 1)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op == 2:
            buf[pos:pos] = rng.randbytes(rng.randrange(1, 16))
        elif op == 3:
            del buf[pos:pos + rng.randrange(1, 16)]
        elif op == 4:
            del buf[pos:]
        elif op == 5 and buf:  # duplicate a range
            a = rng.randrange(len(buf))
            buf[pos:pos] = buf[a:a + rng.randrange(1, 64)]
        elif op == 6:  # splice with another seed
            other = rng.choice(seeds)
            buf[pos:] = other[rng.randrange(len(other) + 1):]
        elif op in (7, 8):  # an interesting integer where a length field may be
            size = rng.choice((1, 2, 4, 8))
            value = rng.choice(_INTERESTING) & ((1 << (8 * size)) - 1)
            buf[pos:pos + size] = value.to_bytes(size, "little" if op == 7 else "big")
    # ASCII-level edits for the JSON targets: swap a digit, a quote, a bracket
    if buf[:1] in (b"{", b"[") or b'"' in buf[:16]:
        for _ in range(rng.randrange(3)):
            pos = rng.randrange(len(buf)) if buf else 0
            buf[pos:pos + 1] = rng.choice((b"9", b"-1", b'"', b"{", b"}", b"[", b"]", b",", b":", b"..",
                                           b"\\u0000", b"1e400", b"/", b"null", b"[]", b"{}", b""))
    return bytes(buf[:max_len])


def worker(args) -> int:
    import logging

    logging.disable(logging.CRITICAL)  # check_ticket logs each refusal: millions of them here
    engine = args.engine
    target = load_targets(instrument=engine == "atheris")[args.target]
    findings_dir = Path(args.findings)
    stats = Stats(target.name, Path(args.report) if args.report else None, findings_dir, args.slow)
    print(f"target {target.name}: {target.doc}; engine {engine}; {len(target.seeds)} seeds", flush=True)
    from modeldist.errors import ModelDistError

    for seed in target.seeds:  # a seed that is itself a finding: the target or its seeds rotted
        try:
            target.fn(seed)
        except ModelDistError:
            pass
        except Exception as exc:  # noqa: BLE001
            print(f"seed is a finding: {exc!r}", file=sys.stderr)
            return 3
    if engine == "atheris":
        import atheris

        corpus = Path(tempfile.mkdtemp(prefix=f"modeldist-fuzz-{target.name}-"))
        for k, seed in enumerate(target.seeds):
            (corpus / f"seed-{k}").write_bytes(seed)
        argv = [sys.argv[0], f"-max_len={target.max_len}", "-timeout=30", "-rss_limit_mb=4096",
                "-print_final_stats=1", f"-seed={args.seed}" if args.seed else "-seed=0"]
        if args.seconds:
            argv.append(f"-max_total_time={int(args.seconds)}")
        if args.runs:
            argv.append(f"-runs={args.runs}")
        argv.append(str(corpus))
        atheris.Setup(argv, lambda data: stats.run_one(target.fn, data))
        atheris.Fuzz()  # libFuzzer exits the process at the end
        return 0
    rng = random.Random(args.seed)
    end = time.monotonic() + args.seconds if args.seconds else float("inf")
    t0 = time.monotonic()
    while time.monotonic() < end and (not args.runs or stats.inputs < args.runs):
        for _ in range(256):
            stats.run_one(target.fn, mutate(rng, target.seeds, target.max_len))
    stats.flush()
    print(f"Done {stats.inputs} runs in {int(time.monotonic() - t0)} second(s)", flush=True)
    return 0


def run_target(name: str, args) -> dict:
    """Fuzz one target in a child process; its summary."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--target", name, "--engine", args.engine,
               "--report", str(report), "--findings", args.findings, "--slow", str(args.slow), "--seed", str(args.seed)]
        if args.seconds:
            cmd += ["--seconds", str(args.seconds)]
        if args.runs:
            cmd += ["--runs", str(args.runs)]
        t0 = time.monotonic()
        budget = (args.seconds or 3600) + 120
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=budget,
                                  errors="replace")
            log, rc = proc.stdout, proc.returncode
        except subprocess.TimeoutExpired as exc:
            log, rc = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or ""), -9
        wall = time.monotonic() - t0
        if args.verbose:
            sys.stdout.write(log)
        rep = json.loads(report.read_text()) if report.exists() else {"inputs": 0, "findings": []}
    done = re.findall(r"Done (\d+) runs in (\d+) second", log)
    cov = re.findall(r"cov: (\d+) ft: (\d+)", log)
    inputs = int(done[-1][0]) if done else rep["inputs"]
    findings = rep["findings"]
    if rc not in (0,) and not findings:  # libFuzzer itself stopped: a timeout, OOM or a crash in C
        tail = "\n".join(log.strip().splitlines()[-15:])
        findings = [{"key": f"worker exited with status {rc}", "message": tail, "count": 1, "input": "-"}]
    return {"target": name, "engine": args.engine, "seconds": round(wall, 1), "inputs": inputs,
            "exec_per_s": round(inputs / wall) if wall else 0, "cov": int(cov[-1][0]) if cov else None,
            "ft": int(cov[-1][1]) if cov else None, "findings": findings}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    names = ["hello", "reply", "request", "frame", "qp_info", "header", "index", "manifest"]
    p.add_argument("--target", choices=names + ["all"], required=True)
    p.add_argument("--seconds", type=float, default=0, help="how long to fuzz each target (libFuzzer -max_total_time)")
    p.add_argument("--runs", type=int, default=0, help="how many inputs to try per target (libFuzzer -runs)")
    p.add_argument("--engine", choices=["atheris", "random"], default=None,
                   help="atheris (default when installed) or random mutation without coverage feedback")
    p.add_argument("--findings", default=str(Path(tempfile.gettempdir()) / "modeldist-fuzz-findings"),
                   help="where inputs of findings are saved")
    p.add_argument("--slow", type=float, default=2.0, help="an input taking longer than this is a finding (hang)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON line per target")
    p.add_argument("--verbose", action="store_true", help="show the fuzzer's own output")
    p.add_argument("--repro", help="run the target once on this file's bytes and show the outcome")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--report", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.engine is None:
        try:
            import atheris  # noqa: F401
            args.engine = "atheris"
        except ImportError:
            print("atheris is not installed (pip install 'modeldist[dev]'): using --engine random", file=sys.stderr)
            args.engine = "random"
    if args.repro:
        target = load_targets(instrument=False)[args.target]
        try:
            print("result:", repr(target.fn(Path(args.repro).read_bytes()))[:2000])
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            return 1
        return 0
    if args.worker:
        return worker(args)
    if not (args.seconds or args.runs):
        p.error("give --seconds and/or --runs")
    bad = 0
    for name in names if args.target == "all" else [args.target]:
        s = run_target(name, args)
        bad += len(s["findings"])
        if args.json:
            print(json.dumps({k: v for k, v in s.items() if k != "findings"} | {"findings": len(s["findings"])}))
        cov = f", cov {s['cov']} ft {s['ft']}" if s["cov"] is not None else ""
        print(f"{name:9s} {s['engine']}: {s['inputs']} inputs in {s['seconds']}s ({s['exec_per_s']}/s{cov}), "
              f"{len(s['findings'])} unexpected exception(s)", flush=True)
        for f in s["findings"]:
            print(f"    {f['key']} x{f['count']}: {f['message']}\n    input: {f['input']}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
