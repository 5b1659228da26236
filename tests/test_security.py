"""Authentication on both planes: cluster token and (mutual) TLS on gRPC, HMAC tickets on data sessions."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import pytest

from modeldist import metrics
from modeldist.cluster import get_status, stage_all
from modeldist.config import Config
from modeldist.demo import LocalCluster, free_port
from modeldist.errors import AuthError, ModelDistError
from modeldist.security import check_ticket, mint_ticket
from modeldist.transport.base import Hello, get_transport
from tests.tls_helpers import make_certs

MODEL = "ab" * 32


def refusals(plane: str, reason: str) -> float:
    return metrics.AUTH_REFUSALS.labels(plane=plane, reason=reason)._value.get()


def test_ticket_binds_node_model_and_expiry():
    key = b"k" * 32
    t = mint_ticket(key, "node1", MODEL, ttl=60)
    check_ticket(key, t, "node1", MODEL)
    before = refusals("data", "bad_mac")
    for node, model, k in (("node2", MODEL, key), ("node1", "cd" * 32, key), ("node1", MODEL, b"x" * 32)):
        with pytest.raises(AuthError):
            check_ticket(k, t, node, model)
    assert refusals("data", "bad_mac") == before + 3
    with pytest.raises(AuthError, match="expired"):
        check_ticket(key, mint_ticket(key, "node1", MODEL, ttl=-1), "node1", MODEL)
    with pytest.raises(AuthError, match="malformed"):
        check_ticket(key, b"short", "node1", MODEL)


class _Src:
    def __init__(self):
        self.served = 0

    def piece_count(self):
        return 4

    def piece_length(self, i):
        return 4096

    def wait_piece(self, i, timeout):
        self.served += 1
        return memoryview(bytes(4096))

    def sent(self, n, t):
        pass


@pytest.mark.timeout(60)
def test_data_session_refused_before_any_payload():
    key = b"s" * 32
    src = _Src()

    def authorize(hello: Hello, peer: str):
        check_ticket(key, hello.token, hello.node_id, hello.model)
        return src

    tcp = get_transport("tcp")
    with tcp.listen("127.0.0.1:0", authorize) as listener:
        good = mint_ticket(key, "child", MODEL)
        bad = [
            Hello(MODEL, b"", "child"),                                   # unauthenticated
            Hello(MODEL, mint_ticket(b"w" * 32, "child", MODEL), "child"),  # wrong key
            Hello(MODEL, mint_ticket(key, "child", MODEL, ttl=-5), "child"),  # expired
            Hello(MODEL, good, "somebody-else"),                          # a stolen ticket
        ]
        for hello in bad:
            with pytest.raises(AuthError):
                tcp.connect(listener.address, hello, timeout=5)
        assert src.served == 0  # nothing was read from the buffer for a refused session
        with tcp.connect(listener.address, Hello(MODEL, good, "child"), timeout=5) as s:
            s.request([0, 1])
            buf = bytearray(4096)
            assert s.receive(lambda i, n: memoryview(buf)[:n], timeout=5) == 0


@pytest.mark.timeout(120)
def test_real_agent_refuses_a_forged_ticket(tmp_path, minilm_dir):
    with LocalCluster(tmp_path, 2, piece_size="1MiB") as cluster:
        row = stage_all(cluster.address, str(minilm_dir))
        addr = next(n[1] for n in get_status(cluster.address).nodes)
        with pytest.raises(AuthError):
            get_transport("tcp").connect(addr, Hello(row.model, b"\0" * 40, "intruder"), timeout=5)
        log = (cluster.logs / "node0.log").read_text() + (cluster.logs / "node1.log").read_text()
    assert "refused" in log


@pytest.mark.timeout(120)
def test_cluster_token_required_on_every_call(tmp_path, minilm_dir):
    mport = free_port()
    with LocalCluster(tmp_path, 2, token=True) as cluster:
        # with the token (the cluster's own config) everything works
        row = stage_all(cluster.address, str(minilm_dir), config=cluster.client_config)
        assert all(n.complete for n in row.nodes)
        # without it, or with a wrong one: refused, as a typed error
        with pytest.raises(AuthError):
            get_status(cluster.address, config=Config.load())
        wrong = tmp_path / "wrong"
        wrong.write_text("not-the-cluster-token-at-all")
        with pytest.raises(AuthError):
            get_status(cluster.address, config=Config.load(token_file=str(wrong)))
    # a scheduler with metrics counts the refusals
    token = tmp_path / "t2"
    token.write_text("another-cluster-token-1234")
    addr = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, "-m", "modeldist.cli", "scheduler", "--listen", addr,
                             "--token-file", str(token), "--metrics-port", str(mport)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                get_status(addr, config=Config.load(token_file=str(token)), timeout=2)
                break
            except ModelDistError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        for _ in range(3):
            with pytest.raises(AuthError):
                get_status(addr, config=Config.load(), timeout=5)
        text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
        line = next(x for x in text.splitlines()
                    if x.startswith('modeldist_auth_refusals_total{plane="control",reason="missing_token"}'))
        assert float(line.split()[-1]) == 3
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _certs(tmp_path):
    return make_certs(tmp_path)


@pytest.mark.timeout(90)
def test_mutual_tls_scheduler(tmp_path):
    c = _certs(tmp_path)
    addr = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, "-m", "modeldist.cli", "scheduler", "--listen", addr,
                             "--tls-cert", c["server.pem"], "--tls-key", c["server.key"], "--tls-ca", c["ca.pem"]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    good = Config.load(tls_ca=c["ca.pem"], tls_cert=c["client.pem"], tls_key=c["client.key"])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                st = get_status(addr, config=good, timeout=2)
                break
            except ModelDistError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert st.nodes == []
        with pytest.raises(ModelDistError):  # plaintext client against a TLS server
            get_status(addr, config=Config.load(), timeout=3)
        with pytest.raises(ModelDistError):  # TLS but no client certificate: mutual TLS refuses
            get_status(addr, config=Config.load(tls_ca=c["ca.pem"]), timeout=3)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
