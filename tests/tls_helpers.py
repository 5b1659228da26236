"""Test certificates (``cryptography``): a cluster CA, certificates it signs, and an unrelated CA with
a certificate of its own (what an outsider would present). ECDSA P-256, valid for a day."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

__all__ = ["make_certs"]


def make_certs(folder: Path) -> dict[str, str]:
    """Writes PEM files into ``folder``; returns name -> path for ``ca.pem``; ``server.pem``/``.key``
    (SAN localhost and 127.0.0.1: a gRPC server, and any node's data-plane certificate);
    ``client.pem``/``.key``; ``other-ca.pem`` and ``other.pem``/``.key`` (signed by that other CA)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write(stem, key, cert):
        (folder / f"{stem}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                               serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))
        (folder / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def make_ca(stem, cn):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
                .public_key(key.public_key()).serial_number(1).not_valid_before(now)
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        write(stem, key, cert)
        return key, cert

    def make_leaf(stem, ca_key, ca, serial, san):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(stem)).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(serial).not_valid_before(now)
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(san), critical=False).sign(ca_key, hashes.SHA256()))
        write(stem, key, cert)

    ca_key, ca = make_ca("ca", "modeldist-test-ca")
    make_leaf("server", ca_key, ca, 2, [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    make_leaf("client", ca_key, ca, 3, [x509.DNSName("client")])
    other_key, other = make_ca("other-ca", "somebody-elses-ca")
    make_leaf("other", other_key, other, 2, [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    return {f"{stem}.{ext}": str(folder / f"{stem}.{ext}")
            for stem in ("ca", "server", "client", "other-ca", "other") for ext in ("pem", "key")}
