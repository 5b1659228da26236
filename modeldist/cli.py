"""The ``modeldist`` command (DESIGN section 3).

Errors print as one line (``error: ...``) with exit status 1; ``--debug`` shows the traceback. Long
work shows a progress bar on a terminal. This is the only module that configures logging.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from ._fmt import human_bytes as _human
from .config import Config, parse_size
from .errors import ConfigError, ModelDistError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Get model weights onto every node, fast, reading the origin once.")
console = Console(soft_wrap=True)
err_console = Console(stderr=True)
_state = {"debug": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
          verbose: bool = typer.Option(False, "--verbose", "-v", help="Show info logs.")) -> None:
    _state["debug"] = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=err_console, transient=False,
                    disable=not err_console.is_terminal)


TLS_CERT = typer.Option(None, "--tls-cert", help="TLS certificate (PEM) of this process.")
TLS_KEY = typer.Option(None, "--tls-key", help="TLS private key (PEM).")
METRICS_ADDR = typer.Option("127.0.0.1", help="Address /metrics listens on (0.0.0.0 for a Prometheus "
                            "on another host; the default keeps it on this machine).")
TLS_CA = typer.Option(None, "--tls-ca", help="CA (PEM) to trust; on the scheduler it requires client certificates.")
TOKEN_FILE = typer.Option(None, "--token-file", help="File with the cluster token every gRPC call carries.")


def _secure(**kw) -> Config:
    return Config.load(**kw)


def _config(store: Optional[str], piece_size: Optional[str], concurrency: Optional[int] = None) -> Config:
    return Config.load(store=store, piece_size=parse_size(piece_size) if piece_size else None,
                       concurrency=concurrency)


def _stage_with_progress(source: str, cfg: Config, *, revision=None, allow=None, label="staging"):
    from .staging import stage

    with _progress() as progress:
        task = progress.add_task(label, total=None)

        def on_start(manifest, missing):
            done = manifest.total_size - sum(manifest.pieces[i].length for i in missing)
            progress.update(task, total=manifest.total_size, completed=done)

        return stage(source, revision=revision, allow_patterns=allow, config=cfg, on_start=on_start,
                     on_piece=lambda i, n: progress.advance(task, n))


@app.command()
def inspect(source: str = typer.Argument(..., help="hf://org/name[@rev], a folder or file, or a pyarrow.fs URI."),
            revision: Optional[str] = typer.Option(None, help="Revision (branch, tag or commit)."),
            piece_size: Optional[str] = typer.Option(None, help="Piece size, e.g. 4MiB (default: automatic)."),
            allow: Optional[list[str]] = typer.Option(None, help="Only files matching this glob (repeatable)."),
            tensors: bool = typer.Option(False, "--tensors", help="List every tensor."),
            as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
            store: Optional[str] = typer.Option(None, help="Store to look in for piece digests.")) -> None:
    """Show a model's manifest: files, tensors, pieces and digests (reads headers only)."""
    from .manifest import Manifest
    from .store import Store

    cfg = _config(store, piece_size)
    m = Manifest.from_source(source, revision=revision, piece_size=cfg.piece_size, allow_patterns=allow, config=cfg)
    st = Store(config=cfg)
    staged = st.is_complete(m.digest)
    if staged:
        m = st.manifest(m.digest)  # carries the piece digests
    if as_json:
        sys.stdout.write(m.to_json().decode() + "\n")
        return
    console.print(f"[bold]{source}[/]" + (f" @ {m.revision}" if m.revision else ""))
    console.print(f"digest      {m.digest}")
    console.print(f"size        {_human(m.total_size)} in {len(m.files)} files, {len(m.tensors)} tensors")
    console.print(f"pieces      {len(m.pieces)} x {_human(m.piece_size)}"
                  + (f"  (piece digests from store, content {m.content_digest[:16]}...)" if staged
                     else "  (piece digests: computed by the seed when staged)"))
    console.print(f"weights     {', '.join(m.weight_files) or '-'}")
    table = Table("file", "kind", "size", "sha256", box=None)
    for f in m.files:
        table.add_row(f.path, f.kind, _human(f.size), (f.sha256[:16] + "...") if f.sha256 else "-")
    console.print(table)
    dtypes: dict[str, int] = {}
    for t in m.tensors:
        dtypes[t.dtype] = dtypes.get(t.dtype, 0) + t.nbytes
    console.print("dtypes      " + ", ".join(f"{k} {_human(v)}" for k, v in sorted(dtypes.items())))
    if tensors:
        tt = Table("tensor", "dtype", "shape", "file", "bytes", box=None)
        for t in m.tensors:
            tt.add_row(t.name, t.dtype, str(list(t.shape)), t.file, f"[{t.start}, {t.end})")
        console.print(tt)


@app.command()
def stage(source: str = typer.Argument(..., help="hf://org/name[@rev], a folder or file, or a pyarrow.fs URI."),
          revision: Optional[str] = typer.Option(None, help="Revision (branch, tag or commit)."),
          scheduler: Optional[str] = typer.Option(None, help="Scheduler address (swarm)."),
          to: Optional[str] = typer.Option(None, "--to", help="Store: 'shm' (default) or a folder."),
          all_nodes: bool = typer.Option(False, "--all", help="Stage on every registered agent (swarm)."),
          allow: Optional[list[str]] = typer.Option(None, help="Only files matching this glob (repeatable)."),
          piece_size: Optional[str] = typer.Option(None, help="Piece size, e.g. 4MiB (default: automatic)."),
          concurrency: Optional[int] = typer.Option(None, help="Parallel origin reads."),
          tls_cert: Optional[str] = TLS_CERT, tls_key: Optional[str] = TLS_KEY, tls_ca: Optional[str] = TLS_CA,
          token_file: Optional[str] = TOKEN_FILE) -> None:
    """Pre-stage a model into this node's store, or with --scheduler --all on every agent."""
    if all_nodes or scheduler:
        if not scheduler:
            raise ConfigError("--all needs --scheduler ADDR")
        if not all_nodes:
            raise ConfigError("--scheduler stages on the cluster: add --all (every registered agent)")
        from .cluster import stage_all

        stage_all(scheduler, source, revision=revision, allow=allow, piece_size=parse_size(piece_size)
                  if piece_size else 0, console=console, progress=_progress(),
                  config=_secure(tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca, token_file=token_file))
        return
    cfg = _config(to, piece_size, concurrency)
    staged = _stage_with_progress(source, cfg, revision=revision, allow=allow)
    m = staged.manifest
    rate = staged.origin_bytes / staged.seconds if staged.seconds > 0 else 0.0
    console.print(f"staged {_human(m.total_size)} ({len(m.files)} files, {len(m.pieces)} pieces) in "
                  f"{staged.seconds:.2f}s; read {_human(staged.origin_bytes)} from origin"
                  + (f" at {_human(rate)}/s" if staged.origin_bytes else " (already in store)"))
    console.file.flush()
    sys.stdout.write(f"{staged.path}\n")  # plain, unwrapped: scripts read the folder from the last line


@app.command()
def scheduler(listen: str = typer.Option("127.0.0.1:7070", help="Address to serve gRPC on."),
              metrics_port: Optional[int] = typer.Option(None, help="Serve /metrics on this port."),
              metrics_addr: str = METRICS_ADDR,
              dead_after: float = typer.Option(5.0, help="Seconds of silence before a node is declared dead."),
              resume_grace: float = typer.Option(6.0, help="After a restart: seconds to wait for the nodes of a "
                                                 "running broadcast to re-register before rebuilding it without "
                                                 "the missing ones."),
              tls_cert: Optional[str] = TLS_CERT, tls_key: Optional[str] = TLS_KEY, tls_ca: Optional[str] = TLS_CA,
              token_file: Optional[str] = TOKEN_FILE) -> None:
    """Run the scheduler (plans broadcasts, tracks progress, repairs on failure)."""
    import asyncio

    from . import metrics
    from .scheduler.service import serve

    if metrics_port is not None:
        metrics.serve(metrics_port, metrics_addr)
    cfg = _secure(tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca, token_file=token_file)
    asyncio.run(serve(listen, config=cfg, dead_after=dead_after, resume_grace=resume_grace,
                      ready=lambda a: err_console.print(f"scheduler listening on {a}")))


def _data_transport(rdma: str, cfg: Config) -> str:
    """``--rdma``: off -> tcp; auto -> rdma when this node has a usable device, else tcp; on -> rdma or
    refuse to start (RdmaUnavailableError, with the reason and errno). With ``--data-tls``: tcp (auto),
    or refuse to start (on): RDMA would move the bytes unencrypted."""
    if rdma not in ("auto", "on", "off"):
        raise ConfigError(f"--rdma must be auto, on or off, got {rdma!r}")
    if rdma == "off":
        return "tcp"
    if cfg.data_tls:
        if rdma == "on":
            raise ConfigError("--rdma on cannot be combined with --data-tls: RDMA moves the weights between "
                              "memories unencrypted; use --rdma off (or auto, which then picks TCP with TLS)")
        logging.getLogger("modeldist.cli").info("--data-tls: the data plane uses TCP with TLS, not RDMA")
        return "tcp"
    from .errors import RdmaUnavailableError
    from .transport.rdma import check

    try:
        desc = check(cfg)
    except RdmaUnavailableError as exc:
        if rdma == "on":
            raise RdmaUnavailableError(f"--rdma on: {exc}", errno_=exc.errno_) from None
        logging.getLogger("modeldist.cli").info("--rdma auto: %s; the data plane uses TCP", exc)
        return "tcp"
    logging.getLogger("modeldist.cli").info("data plane over RDMA: %s", desc)
    return "rdma"


@app.command()
def agent(scheduler: str = typer.Option(..., help="Scheduler address host:port."),
          listen: str = typer.Option("127.0.0.1:0", help="Data-plane address (port 0 = any)."),
          advertise: Optional[str] = typer.Option(None, help="Data address peers should use (default: listen)."),
          store: Optional[str] = typer.Option(None, help="'shm' (default) or a folder."),
          node_id: Optional[str] = typer.Option(None, help="Node id (default: hostname:port)."),
          zone: str = typer.Option("", help="Zone label (plans prefer same-zone edges)."),
          rack: str = typer.Option("", help="Rack label."),
          upload_bps: float = typer.Option(0.0, help="Upload bandwidth, bytes/s (0 = unknown). Plans give "
                                           "faster nodes more children; when set, each child session is "
                                           "paced at a fair share of it."),
          download_bps: float = typer.Option(0.0, help="Download bandwidth, bytes/s (0 = unknown)."),
          metrics_port: Optional[int] = typer.Option(None, help="Serve /metrics on this port."),
          metrics_addr: str = METRICS_ADDR,
          rdma: str = typer.Option("auto", help="Data plane over RDMA: auto (when this node has a usable "
                                   "device), on (refuse to start without one), off (TCP only). Edges fall back "
                                   "to TCP per piece either way."),
          rdma_device: Optional[str] = typer.Option(None, help="RDMA device, e.g. mlx5_0 (default: first active)."),
          rdma_gid_index: Optional[int] = typer.Option(None, help="GID index (default: RoCE v2, IPv4-mapped)."),
          stall_timeout: float = typer.Option(30.0, help="Seconds without data before a parent counts as stalled."),
          data_tls: bool = typer.Option(False, "--data-tls", help="Every data session over mutual TLS 1.3 with "
                                        "--tls-cert/--tls-key, peers verified against --tls-ca (all three "
                                        "needed; they also secure gRPC). RDMA is then off."),
          tls_cert: Optional[str] = TLS_CERT, tls_key: Optional[str] = TLS_KEY, tls_ca: Optional[str] = TLS_CA,
          token_file: Optional[str] = TOKEN_FILE) -> None:
    """Run this node's agent: fetch what the plan says, serve children, share the store locally."""
    import asyncio

    from . import metrics
    from .agent import Agent

    cfg = _secure(store=store, tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca, token_file=token_file,
                  rdma_device=rdma_device, rdma_gid_index=rdma_gid_index, data_tls=data_tls or None)
    transport = _data_transport(rdma, cfg)
    if cfg.data_tls:
        from .security import data_tls_contexts

        data_tls_contexts(cfg)  # unreadable or invalid certificate, key or CA: ConfigError before start-up
    if metrics_port is not None:
        metrics.serve(metrics_port, metrics_addr)
    labels = {k: v for k, v in (("zone", zone), ("rack", rack)) if v}
    a = Agent(scheduler=scheduler, listen=listen, advertise=advertise, node_id=node_id,
              config=cfg, transport=transport,
              labels=labels, upload_bps=upload_bps, download_bps=download_bps, stall_timeout=stall_timeout)
    asyncio.run(a.run(ready=lambda ag: err_console.print(f"agent {ag.node_id} serving on {ag.data_addr}")))


@app.command()
def status(scheduler: str = typer.Option(..., help="Scheduler address host:port."),
           model: Optional[str] = typer.Option(None, help="Only this model digest."),
           as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
           tls_cert: Optional[str] = TLS_CERT, tls_key: Optional[str] = TLS_KEY, tls_ca: Optional[str] = TLS_CA,
           token_file: Optional[str] = TOKEN_FILE) -> None:
    """Nodes, models, progress, rates and who feeds whom."""
    from .cluster import print_status

    print_status(scheduler, model=model, console=console, as_json=as_json,
                 config=_secure(tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca, token_file=token_file))


@app.command()
def demo(peers: int = typer.Option(4, help="Agents to broadcast to (0 = stage on this node only)."),
         source: Optional[str] = typer.Option(None, help="Model to use (default: generate one)."),
         piece_size: Optional[str] = typer.Option(None, help="Piece size, e.g. 4MiB."),
         size: str = typer.Option("128MiB", help="Size of the generated model."),
         keep: bool = typer.Option(False, help="Keep the temporary store and model.")) -> None:
    """Broadcast a model (generated if none given) to N local agents, verify every byte, print a summary."""
    if peers < 0 or peers > 64:
        raise ConfigError("--peers must be between 0 and 64")
    if peers:
        from .demo import run_demo

        run_demo(peers=peers, source=source, piece_size=piece_size, size=parse_size(size), keep=keep,
                 console=console, progress=_progress())
        return
    import numpy as np
    from safetensors.numpy import load_file

    from .api import load
    from .demo import generate_model

    work = Path(tempfile.mkdtemp(prefix="modeldist-demo-"))
    try:
        if source is None:
            origin_dir = work / "origin"
            console.print(f"generating a {size} model in {origin_dir} ...")
            generate_model(origin_dir, parse_size(size))
            source = str(origin_dir)
        cfg = _config(str(work / "store"), piece_size)
        staged = _stage_with_progress(source, cfg, label="origin -> store")
        m = staged.manifest
        t0 = time.monotonic()
        tensors = load(source, config=cfg)
        load_s = time.monotonic() - t0
        # verify: every file byte-equal to the origin's, every tensor equal to safetensors' own reading
        bad = []
        origin_root = Path(source)
        if origin_root.is_dir():
            for f in m.files:
                if (origin_root / f.path).read_bytes() != (staged.path / f.path).read_bytes():
                    bad.append(f.path)
            for wf in m.weight_files:
                ref = load_file(origin_root / wf)
                for k, v in ref.items():
                    if not np.array_equal(v, tensors[k]):
                        bad.append(k)
        table = Table(title="modeldist demo (single node: origin -> store -> tensors)", show_header=False)
        table.add_column("", style="bold")
        table.add_column("")
        rows = [
            ("model", f"{_human(m.total_size)}: {len(m.files)} files, {len(m.tensors)} tensors, "
                      f"{len(m.pieces)} pieces of {_human(m.piece_size)}"),
            ("stage time", f"{staged.seconds:.2f} s"),
            ("throughput", f"{_human(staged.origin_bytes / max(staged.seconds, 1e-9))}/s"),
            ("origin bytes / model size", f"{staged.origin_bytes / max(m.total_size, 1):.2f}"),
            ("bytes by transport", f"origin {_human(staged.origin_bytes)}"),
            ("load() (zero-copy views)", f"{load_s * 1000:.1f} ms"),
            ("verified", "[green]every byte equal to the origin[/]" if not bad else f"[red]{len(bad)} mismatches[/]"),
        ]
        for k, v in rows:
            table.add_row(k, v)
        console.print(table)
        if bad:
            raise ModelDistError(f"verification failed for: {', '.join(bad[:5])}")
        del tensors
    finally:
        if not keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
        else:
            console.print(f"kept {work}")


def main(argv: Optional[list[str]] = None) -> None:
    try:
        app(args=argv, standalone_mode=False)
    except ModelDistError as exc:
        if _state["debug"]:
            raise
        err_console.print(f"[red]error:[/] {exc}")
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except (typer.Exit, SystemExit) as exc:
        sys.exit(getattr(exc, "exit_code", getattr(exc, "code", 0)))
    except Exception as exc:  # usage errors of the (vendored) click under typer, duck-typed
        if type(exc).__name__ == "NoArgsIsHelpError":
            sys.exit(0)
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            sys.exit(exc.exit_code)
        if type(exc).__name__ == "Abort":
            sys.exit(1)
        if _state["debug"]:
            raise
        err_console.print(f"[red]error:[/] {type(exc).__name__}: {exc} (run with --debug for the traceback)")
        sys.exit(1)

if __name__ == "__main__":
    main()
