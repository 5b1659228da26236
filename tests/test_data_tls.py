"""TLS on the TCP data plane (``data_tls``, ``modeldist agent --data-tls``; issue #7).

The transport contract itself runs over TLS too (``tcp-tls`` in ``test_transport_contract.py``).
Here: mismatches and bad certificates fail fast as typed ``TlsError`` (a ``TransportError``), are
counted (``modeldist_auth_refusals_total{plane="data",reason="tls"}``, at each end that sees them)
and never reach the source; silent peers hit the deadline; settings are checked at start-up; and a
real 3-agent broadcast with ``--data-tls`` everywhere ends bit-identical. Every wait has a deadline.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from modeldist import metrics
from modeldist.cluster import get_status, stage_all
from modeldist.config import Config
from modeldist.demo import LocalCluster, verify_store
from modeldist.errors import ConfigError, TlsError, TransportError
from modeldist.transport.base import Hello, get_transport
from modeldist.transport.tcp import TcpListener

MODEL = "ab" * 32
TOKEN = b"data-tls-token"
PIECE = 64 << 10


def tls_config(c: dict, cert: str = "server", ca: str = "ca.pem") -> Config:
    return Config.load(env={}, data_tls=True, tls_cert=c[f"{cert}.pem"], tls_key=c[f"{cert}.key"], tls_ca=c[ca])


def tls(c: dict, **kw):
    return get_transport("tcp", config=tls_config(c, **kw))


def plain():
    return get_transport("tcp", config=Config.load(env={}))


def tls_refusals() -> float:
    return metrics.AUTH_REFUSALS.labels(plane="data", reason="tls")._value.get()


def wait_refusals(at_least: float, timeout: float = 5.0) -> float:
    """The parent counts in its own thread, maybe just after the child saw the error: poll."""
    deadline = time.monotonic() + timeout
    while (n := tls_refusals()) < at_least:
        assert time.monotonic() < deadline, f"TLS refusals {n}, expected >= {at_least}"
        time.sleep(0.02)
    return n


class Src:
    def __init__(self, n: int = 4):
        self.n = n
        self.served = 0

    def piece_count(self):
        return self.n

    def piece_length(self, i):
        return PIECE

    def wait_piece(self, i, timeout):
        self.served += 1
        return memoryview(bytes([i % 251]) * PIECE)

    def sent(self, n, t):
        pass


def authorize_to(src):
    def authorize(hello: Hello, peer: str):
        if hello.token != TOKEN:
            raise TransportError("bad token", peer=peer)
        return src
    return authorize


def hello() -> Hello:
    return Hello(MODEL, TOKEN, "child")


def fetch_all(session, n: int, timeout: float = 10) -> list[int]:
    buf = bytearray(PIECE)
    got = []
    while (i := session.receive(lambda idx, k: memoryview(buf)[:k], timeout=timeout)) is not None:
        assert bytes(buf) == bytes([i % 251]) * PIECE
        got.append(i)
    return got


# --- mismatches and certificates ------------------------------------------------------------


@pytest.mark.timeout(30)
def test_tls_to_tls_works(tls_certs):
    t = tls(tls_certs)
    src = Src()
    with t.listen("127.0.0.1:0", authorize_to(src)) as listener:
        with t.connect(listener.address, hello(), timeout=5) as s:
            assert s.sock.version() == "TLSv1.3"
            s.request(range(4))
            assert sorted(fetch_all(s, 4)) == [0, 1, 2, 3]


@pytest.mark.timeout(30)
def test_plaintext_child_to_tls_parent_is_refused_fast_and_counted(tls_certs):
    src = Src()
    before = tls_refusals()
    with tls(tls_certs).listen("127.0.0.1:0", authorize_to(src)) as listener:
        t0 = time.monotonic()
        with pytest.raises(TlsError, match="requires TLS") as info:
            plain().connect(listener.address, hello(), timeout=5)
        assert time.monotonic() - t0 < 2
        assert isinstance(info.value, TransportError) and info.value.peer == listener.address
        wait_refusals(before + 2)  # the parent refused it, the child learnt why: one each
    assert src.served == 0


@pytest.mark.timeout(30)
def test_tls_child_to_plaintext_parent_is_a_typed_error_and_counted(tls_certs):
    src = Src()
    before = tls_refusals()
    with plain().listen("127.0.0.1:0", authorize_to(src)) as listener:
        t0 = time.monotonic()
        with pytest.raises(TlsError, match="--data-tls") as info:
            tls(tls_certs).connect(listener.address, hello(), timeout=5)
        assert time.monotonic() - t0 < 2
        assert info.value.peer == listener.address
        wait_refusals(before + 2)  # the plaintext parent saw a TLS handshake, the child a hang-up
    assert src.served == 0


@pytest.mark.timeout(30)
def test_child_certificate_from_another_ca_is_refused(tls_certs):
    """The child trusts the cluster CA (so it accepts the parent) but presents a certificate from
    another CA: the parent refuses it before reading the hello, and serves nothing."""
    src = Src()
    before = tls_refusals()
    with tls(tls_certs).listen("127.0.0.1:0", authorize_to(src)) as listener:
        outsider = tls(tls_certs, cert="other", ca="ca.pem")
        t0 = time.monotonic()
        with pytest.raises(TlsError):
            outsider.connect(listener.address, hello(), timeout=5)
        assert time.monotonic() - t0 < 2
        wait_refusals(before + 1)
        # the listener is unharmed: a cluster member still gets its pieces
        with tls(tls_certs, cert="client").connect(listener.address, hello(), timeout=5) as s:
            s.request([1])
            assert fetch_all(s, 1) == [1]
    assert src.served == 1


@pytest.mark.timeout(30)
def test_parent_certificate_from_another_ca_is_refused_by_the_child(tls_certs):
    src = Src()
    before = tls_refusals()
    with tls(tls_certs, cert="other", ca="ca.pem").listen("127.0.0.1:0", authorize_to(src)) as listener:
        with pytest.raises(TlsError, match="certificate verify failed"):
            tls(tls_certs).connect(listener.address, hello(), timeout=5)
        wait_refusals(before + 1)
    assert src.served == 0


@pytest.mark.timeout(30)
def test_a_silent_parent_hits_the_child_deadline(tls_certs):
    with socket.socket() as srv:  # listening (the kernel completes the TCP handshake), never answering
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        addr = "127.0.0.1:%d" % srv.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(TlsError, match="timed out"):
            tls(tls_certs).connect(addr, hello(), timeout=0.5)
        assert time.monotonic() - t0 < 3


@pytest.mark.timeout(30)
def test_a_silent_child_hits_the_parent_deadline(tls_certs):
    src = Src()
    t = tls(tls_certs)
    before = tls_refusals()
    listener = TcpListener("127.0.0.1:0", authorize_to(src), io_timeout=0.5, tls=t.tls)
    try:
        host, port = listener.address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as idle:
            wait_refusals(before + 1, timeout=5)  # handshake deadline: refused, counted, thread freed
            idle.settimeout(5)
            assert idle.recv(1) == b""  # the parent hung up
        with t.connect(listener.address, hello(), timeout=5) as s:
            s.request([0])
            assert fetch_all(s, 1) == [0]
    finally:
        listener.close()


# --- settings and start-up ------------------------------------------------------------------


def test_data_tls_needs_cert_key_and_ca(tls_certs):
    with pytest.raises(ConfigError, match="--tls-key, --tls-ca"):
        Config.load(env={}, data_tls=True, tls_cert=tls_certs["server.pem"])
    env = {"MODELDIST_DATA_TLS": "1", "MODELDIST_TLS_CERT": tls_certs["server.pem"],
           "MODELDIST_TLS_KEY": tls_certs["server.key"], "MODELDIST_TLS_CA": tls_certs["ca.pem"]}
    assert Config.load(env=env).data_tls is True
    assert get_transport("tcp", config=Config.load(env=env)).tls is not None
    assert Config.load(env={**env, "MODELDIST_DATA_TLS": "off"}).data_tls is False


def test_unusable_files_are_config_errors(tls_certs, tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="bad.pem"):
        get_transport("tcp", config=Config.load(env={}, data_tls=True, tls_cert=str(bad),
                                                tls_key=tls_certs["server.key"], tls_ca=tls_certs["ca.pem"]))
    with pytest.raises(ConfigError, match="cannot read TLS CA"):
        get_transport("tcp", config=Config.load(env={}, data_tls=True, tls_cert=tls_certs["server.pem"],
                                                tls_key=tls_certs["server.key"], tls_ca=str(tmp_path / "nope.pem")))
    with pytest.raises(ConfigError):  # a key that is not the certificate's
        get_transport("tcp", config=Config.load(env={}, data_tls=True, tls_cert=tls_certs["server.pem"],
                                                tls_key=tls_certs["client.key"], tls_ca=tls_certs["ca.pem"]))


def test_rdma_refuses_data_tls(tls_certs):
    from modeldist.cli import _data_transport

    cfg = tls_config(tls_certs)
    with pytest.raises(ConfigError, match="--data-tls"):
        get_transport("rdma", config=cfg)
    with pytest.raises(ConfigError, match="--rdma on cannot be combined with --data-tls"):
        _data_transport("on", cfg)
    assert _data_transport("auto", cfg) == "tcp"


@pytest.mark.timeout(60)
def test_agent_with_data_tls_but_no_certificates_refuses_to_start(tmp_path):
    out = subprocess.run([sys.executable, "-m", "modeldist.cli", "agent", "--scheduler", "127.0.0.1:9",
                          "--store", str(tmp_path / "store"), "--data-tls"],
                         capture_output=True, text=True, timeout=50)
    assert out.returncode == 1
    assert "error: --data-tls needs --tls-cert, --tls-key, --tls-ca" in out.stderr
    assert "Traceback" not in out.stderr


# --- a real swarm ---------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_swarm_broadcast_with_data_tls_on_every_agent(tmp_path, minilm_dir, tls_certs, monkeypatch):
    """Scheduler and 3 agents with the cluster's certificates (mutual TLS on gRPC), every agent with
    ``--data-tls``: the broadcast completes bit-identical, over TLS (a plaintext child is refused)."""
    for key, name in (("TLS_CERT", "server.pem"), ("TLS_KEY", "server.key"), ("TLS_CA", "ca.pem")):
        monkeypatch.setenv(f"MODELDIST_{key}", tls_certs[name])  # every process of the cluster, and this client
    with LocalCluster(tmp_path, 3, piece_size="1MiB", agent_args=["--data-tls"]) as cluster:
        row = stage_all(cluster.address, str(minilm_dir), config=cluster.client_config, timeout=120)
        assert all(n.complete for n in row.nodes) and len(row.nodes) == 3
        assert sum(n.peer_bytes for n in row.nodes) > 0, "some pieces must have gone peer to peer"
        for n in row.nodes:
            assert verify_store(cluster.store_of(n.node_id), row.model, minilm_dir) == []
        # the data plane really is TLS: a plaintext child is refused by every agent
        addrs = [node[1] for node in get_status(cluster.address, config=cluster.client_config).nodes]
        assert len(addrs) == 3
        for addr in addrs:
            with pytest.raises(TlsError, match="requires TLS"):
                plain().connect(addr, Hello(row.model, b"\0" * 40, "intruder"), timeout=5)

        def tls_log_lines() -> int:
            return sum((cluster.logs / f"node{i}.log").read_text().count("refused (TLS)") for i in range(3))

        deadline = time.monotonic() + 10
        while tls_log_lines() < 3 and time.monotonic() < deadline:  # each agent logs just after it replies
            time.sleep(0.05)
        assert tls_log_lines() == 3  # the three probes above, nothing during the broadcast


@pytest.mark.timeout(120)
def test_scheduler_refuses_an_agent_whose_data_tls_differs(tmp_path, tls_certs, monkeypatch):
    """A plaintext agent joining a --data-tls cluster could talk to nobody (and its failing sessions
    would look like stalls): the scheduler refuses its registration with a clear reason."""
    for key, name in (("TLS_CERT", "server.pem"), ("TLS_KEY", "server.key"), ("TLS_CA", "ca.pem")):
        monkeypatch.setenv(f"MODELDIST_{key}", tls_certs[name])
    with LocalCluster(tmp_path, 2, agent_args=["--data-tls"]) as cluster:
        cluster.agent_args = []
        cluster.start_agent("plain")  # the same certificates for gRPC, but no --data-tls
        log = cluster.logs / "plain.log"
        deadline = time.monotonic() + 30
        while "data-plane TLS mismatch" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, (log.read_text() if log.exists() else "no log",
                                                 (cluster.logs / "scheduler.log").read_text()[-2000:])
            time.sleep(0.1)
        nodes = {node[0] for node in get_status(cluster.address, config=cluster.client_config).nodes}
        assert nodes == {"node0", "node1"}
