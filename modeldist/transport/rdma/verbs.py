"""The verbs layer of the RDMA data plane: the only module of modeldist that imports pyverbs.

Works with Debian's ``python3-pyverbs`` (rdma-core 44: enums in ``pyverbs.enums``) and newer
rdma-core / PyPI pyverbs (``pyverbs.libibverbs_enums``, enum classes); pyverbs is imported on first
use, never at import time, so a machine without it only pays for a failed import when RDMA is asked
for.

- ``Device``: one opened device port per process and setting (context, the GID to use, the port's
  MTU and limits), shared by every session; ``open_device`` caches it. One protection domain per
  *model* (``domain``: the manifest digest), shared by every session of that model: a queue pair
  can only reach the memory regions of its own model, so a peer authorized for one model cannot
  read another model this node holds, whatever rkey it tries.
- Memory: ``Device.acquire(buffer, domain)`` registers a whole buffer (a store mapping: one memory
  region per file mapping, never per piece) and reference-counts it, so the sessions of one model
  on one node share one registration; it is deregistered when the last session releases it. A
  region holds a buffer export of its mapping while registered, so the mapping cannot be unmapped
  (and its address reused) under the NIC.
- ``Endpoint``: one RC queue pair and its completion queue for one edge: created in INIT, connected
  (RTR, RTS) with the other end's ``QpInfo``, RDMA READs posted and polled, forced into the error
  state (the fault-injection hook and the first step of a fallback), destroyed.

Every verbs failure becomes ``RdmaUnavailableError`` (device, GID, registration, QP setup) or
``TransportError`` (a transfer) with the errno (``.errno_``) of the failing call.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import importlib
import ipaddress
import logging
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import RdmaUnavailableError, TransportError
from ..tcp.wire import QpInfo

__all__ = ["Device", "Endpoint", "Region", "open_device", "buffer_address", "wc_errno", "LINK_IB", "LINK_ETH"]

log = logging.getLogger(__name__)

LINK_IB, LINK_ETH = 1, 2
#: RDMA READs one edge keeps in flight at the responder (capped by the device's limits)
MAX_RD_ATOMIC = 16

_E = None  # resolved constants (a SimpleNamespace), see _pv()
_MODS: dict = {}


def _pv():
    """Import pyverbs once; raise RdmaUnavailableError (ENOSYS) when it is not installed."""
    global _E
    if _E is not None:
        return _MODS
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        from pyverbs import addr, cq, device, mr, pd, qp, wr  # noqa: F401
        from pyverbs.pyverbs_error import PyverbsError, PyverbsRDMAError
    except ImportError as exc:
        raise RdmaUnavailableError(
            f"pyverbs is not importable ({exc}); install rdma-core's python3-pyverbs and expose it to this "
            "Python (a .pth file or PYTHONPATH entry with the pyverbs package)", errno_=errno.ENOSYS) from exc
    finally:
        # pyverbs calls logging.basicConfig(level=INFO) on import: logging is the application's business
        for h in root.handlers[:]:
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)
    enums = None
    for name in ("pyverbs.libibverbs_enums", "pyverbs.enums"):  # rdma-core >= 59, then 44..58
        try:
            enums = importlib.import_module(name)
            break
        except ImportError:
            continue
    if enums is None:
        raise RdmaUnavailableError("pyverbs has no enum module (pyverbs.enums / pyverbs.libibverbs_enums)",
                                   errno_=errno.ENOSYS)
    from types import SimpleNamespace

    names = ["IBV_ACCESS_LOCAL_WRITE", "IBV_ACCESS_REMOTE_READ", "IBV_QPT_RC", "IBV_WR_RDMA_READ",
             "IBV_SEND_SIGNALED", "IBV_WC_SUCCESS", "IBV_WC_WR_FLUSH_ERR", "IBV_WC_RETRY_EXC_ERR",
             "IBV_WC_REM_ACCESS_ERR", "IBV_WC_REM_OP_ERR", "IBV_WC_LOC_PROT_ERR", "IBV_WC_LOC_ACCESS_ERR",
             "IBV_WC_LOC_LEN_ERR", "IBV_WC_REM_INV_REQ_ERR", "IBV_WC_RESP_TIMEOUT_ERR", "IBV_QPS_ERR",
             "IBV_QP_STATE", "IBV_PORT_ACTIVE", "IBV_LINK_LAYER_INFINIBAND", "IBV_LINK_LAYER_ETHERNET",
             "IBV_GID_TYPE_ROCE_V2", "IBV_GID_TYPE_SYSFS_ROCE_V2"]
    _E = SimpleNamespace(**{n: _const(enums, n) for n in names})
    _MODS.update(addr=addr, cq=cq, device=device, mr=mr, pd=pd, qp=qp, wr=wr, PyverbsError=PyverbsError,
                 PyverbsRDMAError=PyverbsRDMAError)
    return _MODS


def _const(mod, name: str) -> int:
    """An enum value by its C name: module-level (rdma-core 44) or inside an enum class (newer)."""
    v = getattr(mod, name, None)
    if v is None:
        for attr in dir(mod):
            cls = getattr(mod, attr)
            if isinstance(cls, type) and hasattr(cls, name):
                v = getattr(cls, name)
                break
    if v is None:
        raise RdmaUnavailableError(f"pyverbs lacks {name}", errno_=errno.ENOSYS)
    return int(v)


def _errno_of(exc: BaseException, default: int = errno.EIO) -> int:
    code = getattr(exc, "error_code", None)
    if isinstance(code, int) and code > 0:
        return code
    code = getattr(exc, "errno", None)
    return code if isinstance(code, int) and code > 0 else default


def buffer_address(buf) -> tuple[int, int]:
    """(address, length) of a contiguous buffer (writable or not), without copying or holding it."""
    import numpy as np

    mv = buf if isinstance(buf, memoryview) else memoryview(buf)
    if mv.nbytes == 0:
        return 0, 0
    arr = np.frombuffer(mv, dtype=np.uint8)
    return arr.__array_interface__["data"][0], mv.nbytes


# --- the device -------------------------------------------------------------------------------


@dataclass
class Region:
    """One registered buffer (a whole store mapping)."""

    addr: int
    length: int
    lkey: int
    rkey: int
    writable: bool
    mr: object = field(repr=False)
    export: memoryview | None = field(repr=False)
    refs: int = 1
    domain: str = ""

    def contains(self, addr: int, n: int) -> bool:
        return self.addr <= addr and addr + n <= self.addr + self.length


@dataclass(frozen=True)
class _Gid:
    index: int
    raw: bytes      # 16 bytes
    roce_v2: bool

    @property
    def ipv4(self) -> str | None:
        if self.raw[:10] == bytes(10) and self.raw[10:12] == b"\xff\xff":
            return str(ipaddress.IPv4Address(self.raw[12:]))
        return None


class Device:
    """An opened RDMA device port: context, one protection domain, GIDs, limits."""

    def __init__(self, name: str | None = None, gid_index: int = -1):
        m = _pv()
        E = _E
        PyverbsError = m["PyverbsError"]
        try:
            devices = m["device"].get_device_list()
        except PyverbsError as exc:
            raise RdmaUnavailableError(f"cannot list RDMA devices: {exc}", errno_=_errno_of(exc, errno.ENODEV)) from exc
        names = [d.name.decode() for d in devices]
        if not names:
            raise RdmaUnavailableError("no RDMA device on this machine (ibv_get_device_list is empty)",
                                       errno_=errno.ENODEV)
        if name is not None and name not in names:
            raise RdmaUnavailableError(f"RDMA device {name!r} not found (have: {', '.join(names)})", errno_=errno.ENODEV)
        last: Exception | None = None
        self.ctx = None
        for cand in [name] if name is not None else names:
            try:
                ctx = m["device"].Context(name=cand)
            except PyverbsError as exc:
                last = exc
                continue
            try:
                nports = ctx.query_device().phys_port_cnt
                for port in range(1, nports + 1):
                    pa = ctx.query_port(port)
                    if pa.state == E.IBV_PORT_ACTIVE:
                        self.ctx, self.name, self.port, self.port_attr = ctx, cand, port, pa
                        break
            except PyverbsError as exc:
                last = exc
            if self.ctx is not None:
                break
            ctx.close()
        if self.ctx is None:
            why = f": {last}" if last else ""
            raise RdmaUnavailableError(f"no RDMA device with an active port (tried {', '.join([name] if name else names)})"
                                       f"{why}", errno_=_errno_of(last, errno.ENETDOWN) if last else errno.ENETDOWN)
        try:
            self.dev_attr = self.ctx.query_device()
            ll = self.port_attr.link_layer
            self.link_layer = LINK_IB if ll == E.IBV_LINK_LAYER_INFINIBAND else LINK_ETH
            self.gids = self._gid_table()
            if not self.gids:
                raise RdmaUnavailableError(f"{self.name} port {self.port} has no GID", errno_=errno.EADDRNOTAVAIL)
            self.gid = self._choose_gid(gid_index)
            m["pd"].PD(self.ctx).close()  # the device can allocate protection domains
        except PyverbsError as exc:
            self.ctx.close()
            raise RdmaUnavailableError(f"cannot set up {self.name}: {exc}", errno_=_errno_of(exc)) from exc
        except BaseException:
            self.ctx.close()
            raise
        a = self.dev_attr
        self.rd_atomic = max(1, min(MAX_RD_ATOMIC, a.max_qp_rd_atom, a.max_qp_init_rd_atom))
        self.max_msg = max(4096, min(int(self.port_attr.max_msg_sz or (1 << 30)), 1 << 30))
        self.max_wr = max(16, min(int(a.max_qp_wr), 1024))
        self.lock = threading.Lock()
        self._regions: dict[tuple[str, int, int], Region] = {}
        self._pds: dict[str, list] = {}  # domain -> [PD, references (regions, scratch buffers, queue pairs)]
        self.endpoints = 0  # queue pairs alive
        self.closed = False

    def close(self) -> None:
        """Release everything in order (regions, PD, context); at exit, see ``_close_devices``."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            for r in list(self._regions.values()):
                try:
                    r.mr.close()
                except _MODS["PyverbsError"]:
                    pass
                if r.export is not None:
                    r.export.release()
            self._regions.clear()
            try:
                for pd, _refs in self._pds.values():
                    pd.close()
                self._pds.clear()
                self.ctx.close()
            except _MODS["PyverbsError"] as exc:
                log.debug("closing %s: %s", self.name, exc)

    def _pd_get(self, domain: str):
        """The protection domain of ``domain``, one more reference (caller holds ``lock``)."""
        entry = self._pds.get(domain)
        if entry is None:
            try:
                entry = self._pds[domain] = [_MODS["pd"].PD(self.ctx), 0]
            except _MODS["PyverbsError"] as exc:
                raise RdmaUnavailableError(f"cannot allocate a protection domain on {self.name}: {exc}",
                                           errno_=_errno_of(exc, errno.ENOMEM)) from exc
        entry[1] += 1
        return entry[0]

    def _pd_put(self, domain: str) -> None:
        """Drop a reference; the last one deallocates the domain (caller holds ``lock``)."""
        entry = self._pds.get(domain)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del self._pds[domain]
            try:
                entry[0].close()
            except _MODS["PyverbsError"] as exc:
                log.warning("%s: deallocating a protection domain failed: %s", self.name, exc)

    def describe(self) -> str:
        g = self.gid
        return (f"{self.name} port {self.port} ({'RoCE' if self.link_layer == LINK_ETH else 'InfiniBand'}, "
                f"gid[{g.index}] {g.ipv4 or g.raw.hex()}{' v2' if g.roce_v2 else ''}, "
                f"mtu enum {self.port_attr.active_mtu}, rd_atomic {self.rd_atomic})")

    # --- GIDs ---

    def _gid_table(self) -> list[_Gid]:
        """Non-zero GIDs of the port, with their type (one ibv_query_gid_table call when available)."""
        E, ctx, port = _E, self.ctx, self.port
        out: list[_Gid] = []
        try:
            entries = ctx.query_gid_table(max(1, self.port_attr.gid_tbl_len) * max(1, self.dev_attr.phys_port_cnt))
            for en in entries:
                if en.port_num != port:
                    continue
                raw = bytes.fromhex(en.gid_str().replace(":", ""))
                if any(raw):
                    out.append(_Gid(en.gid_index, raw, en.gid_type == E.IBV_GID_TYPE_ROCE_V2))
            return sorted(out, key=lambda g: g.index)
        except (AttributeError, _MODS["PyverbsError"]):
            pass
        for i in range(min(self.port_attr.gid_tbl_len, 256)):  # older stacks: one query per entry
            try:
                raw = bytes.fromhex(ctx.query_gid(port, i).gid.replace(":", ""))
            except _MODS["PyverbsError"]:
                break
            if not any(raw):
                continue
            try:
                v2 = ctx.query_gid_type(port, i) == E.IBV_GID_TYPE_SYSFS_ROCE_V2
            except _MODS["PyverbsError"]:
                v2 = False
            out.append(_Gid(i, raw, v2))
        return out

    def _choose_gid(self, want: int) -> _Gid:
        if want >= 0:
            for g in self.gids:
                if g.index == want:
                    return g
            raise RdmaUnavailableError(f"{self.name} port {self.port} has no GID at index {want}",
                                       errno_=errno.EADDRNOTAVAIL)
        if self.link_layer == LINK_IB:
            return self.gids[0]
        # RoCE: v2 with an IPv4-mapped address, then v2 routable, then any v2, then whatever is first
        def rank(g: _Gid):
            link_local = g.raw[:2] == b"\xfe\x80"
            return (g.roce_v2, g.ipv4 is not None, not link_local, -g.index)
        return max(self.gids, key=rank)

    def gid_for(self, local_ip: str | None) -> _Gid:
        """The GID for an edge whose TCP session leaves from ``local_ip``: the RoCE v2 GID mapping that
        address when there is one (multi-NIC hosts), else the device's chosen GID."""
        if local_ip and self.link_layer == LINK_ETH:
            for g in self.gids:
                if g.roce_v2 and g.ipv4 == local_ip:
                    return g
        return self.gid

    # --- memory ---

    def acquire(self, buf, domain: str = "") -> Region:
        """Register ``buf`` (whole) in ``domain`` or take another reference on that registration."""
        m = _pv()
        mv = memoryview(buf)
        if not mv.contiguous:
            raise RdmaUnavailableError("cannot register a non-contiguous buffer", errno_=errno.EINVAL)
        addr, n = buffer_address(mv)
        if n == 0:
            raise RdmaUnavailableError("cannot register an empty buffer", errno_=errno.EINVAL)
        key = (domain, addr, n)
        with self.lock:
            if self.closed:
                mv.release()
                raise RdmaUnavailableError(f"{self.name} is closed", errno_=errno.ESHUTDOWN)
            r = self._regions.get(key)
            if r is not None:
                r.refs += 1
                mv.release()
                return r
            writable = not mv.readonly
            access = _E.IBV_ACCESS_REMOTE_READ | (_E.IBV_ACCESS_LOCAL_WRITE if writable else 0)
            try:
                pd = self._pd_get(domain)
            except RdmaUnavailableError:
                mv.release()
                raise
            try:
                mr = m["mr"].MR(pd, n, access, address=addr)
            except m["PyverbsError"] as exc:
                self._pd_put(domain)
                mv.release()
                code = _errno_of(exc, errno.ENOMEM)
                hint = " (raise the memlock limit: ulimit -l / LimitMEMLOCK)" if code in (errno.ENOMEM, errno.EPERM) else ""
                raise RdmaUnavailableError(f"cannot register {n} bytes with {self.name}: {exc}{hint}",
                                           errno_=code) from exc
            r = Region(addr, n, mr.lkey, mr.rkey, writable, mr, mv, domain=domain)
            self._regions[key] = r
            return r

    def release(self, r: Region) -> None:
        with self.lock:
            r.refs -= 1
            if r.refs > 0:
                return
            self._regions.pop((r.domain, r.addr, r.length), None)
            try:
                r.mr.close()
            except _MODS["PyverbsError"] as exc:
                log.warning("%s: deregistering %d bytes failed: %s", self.name, r.length, exc)
            if r.export is not None:
                r.export.release()
                r.export = None
            self._pd_put(r.domain)

    def scratch(self, n: int, domain: str = "") -> Region:
        """A registered buffer of its own (bounce buffer for destinations outside every region)."""
        m = _pv()
        with self.lock:
            pd = self._pd_get(domain)
            try:
                mr = m["mr"].MR(pd, n, _E.IBV_ACCESS_LOCAL_WRITE)
            except m["PyverbsError"] as exc:
                self._pd_put(domain)
                raise RdmaUnavailableError(f"cannot allocate a {n}-byte bounce buffer: {exc}",
                                           errno_=_errno_of(exc, errno.ENOMEM)) from exc
        return Region(mr.buf, n, mr.lkey, mr.rkey, True, mr, None, refs=-1, domain=domain)

    def drop_scratch(self, r: Region) -> None:
        with self.lock:
            try:
                r.mr.close()
            except _MODS["PyverbsError"]:
                pass
            self._pd_put(r.domain)

    def regions(self) -> int:
        with self.lock:
            return len(self._regions)


_DEVICES: dict[tuple[str | None, int], Device | RdmaUnavailableError] = {}
_DEVICES_LOCK = threading.Lock()


def open_device(name: str | None = None, gid_index: int = -1) -> Device:
    """The process's ``Device`` for these settings (opened once; a failure is remembered too)."""
    key = (name, gid_index)
    with _DEVICES_LOCK:
        d = _DEVICES.get(key)
        if d is None:
            if not _sysfs_has_devices():
                d = RdmaUnavailableError("no RDMA device on this machine (/sys/class/infiniband is empty)",
                                         errno_=errno.ENODEV)
            else:
                try:
                    d = Device(name, gid_index)
                    log.info("RDMA: using %s", d.describe())
                except RdmaUnavailableError as exc:
                    d = exc
            _DEVICES[key] = d
    if isinstance(d, RdmaUnavailableError):
        raise RdmaUnavailableError(str(d), errno_=d.errno_)
    return d


@atexit.register
def _close_devices() -> None:
    """At exit, while the interpreter is whole: close idle devices in order (else pyverbs objects are
    torn down in random order during finalization, with errors nobody can print). A device with
    queue pairs still in use (a daemon thread mid-session) is left to the OS: closing it under that
    thread could crash it, so it is kept from ever being deallocated."""
    with _DEVICES_LOCK:
        devices = [d for d in _DEVICES.values() if isinstance(d, Device)]
    for d in devices:
        if d.endpoints == 0:
            d.close()
        else:
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(d))


def _sysfs_has_devices() -> bool:
    p = Path("/sys/class/infiniband")
    try:
        return p.is_dir() and any(p.iterdir())
    except OSError:
        return False


# --- one edge ---------------------------------------------------------------------------------


def wc_errno(status: int) -> int:
    E = _E
    return {E.IBV_WC_RETRY_EXC_ERR: errno.ETIMEDOUT, E.IBV_WC_RESP_TIMEOUT_ERR: errno.ETIMEDOUT,
            E.IBV_WC_REM_ACCESS_ERR: errno.EACCES, E.IBV_WC_LOC_PROT_ERR: errno.EFAULT,
            E.IBV_WC_LOC_ACCESS_ERR: errno.EFAULT, E.IBV_WC_LOC_LEN_ERR: errno.EMSGSIZE,
            E.IBV_WC_REM_INV_REQ_ERR: errno.EINVAL, E.IBV_WC_REM_OP_ERR: errno.EREMOTEIO,
            E.IBV_WC_WR_FLUSH_ERR: errno.ECANCELED}.get(status, errno.EIO)


def wc_status_str(status: int) -> str:
    try:
        return _MODS["cq"].cqe_status_to_str(status)
    except Exception:  # noqa: BLE001 - only a message
        return f"status {status}"


class Endpoint:
    """One RC queue pair (and its CQ) of one edge. ``requester``: this end posts RDMA READs."""

    def __init__(self, dev: Device, *, requester: bool, depth: int, local_ip: str | None = None, domain: str = ""):
        m = _pv()
        self.dev = dev
        self.requester = requester
        self.gid = dev.gid_for(local_ip)
        self.psn = random.getrandbits(24)
        depth = max(1, min(depth, dev.max_wr))
        self.depth = depth
        self.qp = self.cq = None
        self.domain = domain
        with dev.lock:
            if dev.closed:
                raise RdmaUnavailableError(f"{dev.name} is closed", errno_=errno.ESHUTDOWN)
            pd = dev._pd_get(domain)
            dev.endpoints += 1
        self._counted = True
        try:
            self.cq = m["cq"].CQ(dev.ctx, depth + 4, None, None, 0)
            cap = m["qp"].QPCap(max_send_wr=depth, max_recv_wr=1, max_send_sge=1, max_recv_sge=1)
            init = m["qp"].QPInitAttr(qp_type=_E.IBV_QPT_RC, scq=self.cq, rcq=self.cq, cap=cap)
            attr = m["qp"].QPAttr(port_num=dev.port)
            attr.qp_access_flags = 0 if requester else _E.IBV_ACCESS_REMOTE_READ
            self.qp = m["qp"].QP(pd, init, attr)  # -> INIT
        except m["PyverbsError"] as exc:
            self.close()
            raise RdmaUnavailableError(f"cannot create an RC queue pair on {dev.name}: {exc}",
                                       errno_=_errno_of(exc)) from exc

    def info(self) -> QpInfo:
        return QpInfo(self.qp.qp_num, self.psn, self.gid.raw, self.dev.port_attr.lid,
                      int(self.dev.port_attr.active_mtu), self.dev.rd_atomic, self.dev.link_layer)

    def connect(self, remote: QpInfo) -> None:
        """INIT -> RTR -> RTS towards ``remote``."""
        m = _pv()
        if remote.link_layer != self.dev.link_layer:
            raise RdmaUnavailableError("the two ends have different link layers (InfiniBand vs RoCE)",
                                       errno_=errno.EPROTONOSUPPORT)
        try:
            attr = m["qp"].QPAttr(port_num=self.dev.port)
            attr.qp_access_flags = 0 if self.requester else _E.IBV_ACCESS_REMOTE_READ
            attr.path_mtu = min(int(self.dev.port_attr.active_mtu), remote.mtu)
            attr.dest_qp_num = remote.qp_num
            attr.rq_psn = remote.psn
            attr.sq_psn = self.psn
            rd = max(1, min(self.dev.rd_atomic, remote.rd_atomic))
            attr.max_rd_atomic = rd       # READs this end may have outstanding (requester)
            attr.max_dest_rd_atomic = rd  # READs this end serves at once (responder)
            attr.min_rnr_timer = 12
            attr.timeout = 14             # 4.096 us * 2^14 = 67 ms per try
            attr.retry_cnt = 6            # finite: rxe (soft-RoCE) treats 7 as "retry forever"
            attr.rnr_retry = 7
            if self.dev.link_layer == LINK_ETH or any(remote.gid[:8]):
                gid = m["addr"].GID(":".join(remote.gid[i:i + 2].hex() for i in range(0, 16, 2)))
                gr = m["addr"].GlobalRoute(dgid=gid, sgid_index=self.gid.index, hop_limit=64)
                attr.ah_attr = m["addr"].AHAttr(port_num=self.dev.port, is_global=1, gr=gr, dlid=remote.lid)
            else:
                attr.ah_attr = m["addr"].AHAttr(port_num=self.dev.port, is_global=0, dlid=remote.lid)
            self.qp.to_rts(attr)
        except m["PyverbsError"] as exc:
            raise RdmaUnavailableError(f"cannot connect the queue pair to qp {remote.qp_num}: {exc}",
                                       errno_=_errno_of(exc)) from exc

    def post_read(self, wr_id: int, laddr: int, lkey: int, length: int, raddr: int, rkey: int) -> None:
        m = _MODS
        try:
            sge = m["wr"].SGE(laddr, length, lkey)
            wr = m["wr"].SendWR(wr_id=wr_id, opcode=_E.IBV_WR_RDMA_READ, num_sge=1, sg=[sge],
                                send_flags=_E.IBV_SEND_SIGNALED)
            wr.set_wr_rdma(rkey, raddr)
            self.qp.post_send(wr)
        except m["PyverbsError"] as exc:
            raise TransportError(f"RDMA READ could not be posted: {exc}", errno_=_errno_of(exc)) from exc

    def poll(self, n: int = 32) -> list[tuple[int, int]]:
        """Completions as (wr_id, status); status 0 = success."""
        try:
            _, wcs = self.cq.poll(n)
        except _MODS["PyverbsError"] as exc:
            raise TransportError(f"polling the completion queue failed: {exc}", errno_=_errno_of(exc)) from exc
        return [(wc.wr_id, wc.status) for wc in wcs]

    def to_error(self) -> None:
        """Force the queue pair into the error state: posted work is flushed, nothing more moves."""
        if self.qp is None:
            return
        m = _MODS
        try:
            attr = m["qp"].QPAttr()
            attr.qp_state = _E.IBV_QPS_ERR
            self.qp.modify(attr, _E.IBV_QP_STATE)
        except m["PyverbsError"] as exc:
            log.debug("moving qp to the error state failed: %s", exc)

    def close(self) -> None:
        for name in ("qp", "cq"):
            obj = getattr(self, name)
            if obj is not None:
                setattr(self, name, None)
                try:
                    obj.close()
                except _MODS["PyverbsError"] as exc:
                    log.warning("closing the %s failed: %s", name, exc)
        if self._counted:
            self._counted = False
            with self.dev.lock:
                self.dev.endpoints -= 1
                self.dev._pd_put(self.domain)

