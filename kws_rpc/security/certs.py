"""A development PKI: a CA, a server certificate and one client certificate per participant.

For tests and local use only (``make certs`` -> ``certs/``, gitignored): a real deployment brings its own
CA. Keys are ECDSA P-256 (fast to make, accepted by gRPC, OpenSSL/mosquitto and Python's ssl), written
with mode 0600. A client certificate's CN is the participant's name (``edge``, ``w0``, ...), which is what
mosquitto's ``use_identity_as_username`` reads. A second, unrelated CA (``other-ca``) and a client it
signed (``other-client``) exist so tests can show that a peer from the wrong CA is refused.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
DEFAULT_CLIENTS = ("edge", "coop", "w0", "w1", "w2")
RESERVED = ("ca", "server", "other-ca", "other-client")
VALID_DAYS = 365
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

Key = ec.EllipticCurvePrivateKey


def _new_key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kws dev PKI"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(subject: str, issuer: x509.Name, key: Key, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate a little clock skew
            .not_valid_after(now + datetime.timedelta(days=days)))


def _make_ca(cn: str, days: int) -> tuple[x509.Certificate, Key]:
    key = _new_key()
    cert = (_builder(cn, _name(cn), key, days)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return x509.DNSName(host)


def _make_leaf(cn: str, ca: tuple[x509.Certificate, Key], days: int, server_hosts: tuple[str, ...] | None
               ) -> tuple[x509.Certificate, Key]:
    """A server certificate (with SANs) when ``server_hosts`` is given, else a client certificate."""
    ca_cert, ca_key = ca
    key = _new_key()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_hosts is not None else ExtendedKeyUsageOID.CLIENT_AUTH
    b = (_builder(cn, ca_cert.subject, key, days)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                      data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                      crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
         .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
    if server_hosts is not None:
        b = b.add_extension(x509.SubjectAlternativeName([_san(h) for h in server_hosts]), critical=False)
    return b.sign(ca_key, hashes.SHA256()), key


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: Key) -> Path:
    """Written 0600 from the start (never world-readable, not even for a moment)."""
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def make_dev_pki(out_dir: str | Path, hosts: tuple[str, ...] = DEFAULT_HOSTS,
                 clients: tuple[str, ...] = DEFAULT_CLIENTS, days: int = VALID_DAYS) -> dict[str, Path]:
    """Creates (overwrites) the PKI in ``out_dir``; returns {file name: path}, e.g. ``paths["ca.pem"]``,
    ``paths["server.key"]``, ``paths["edge.pem"]``, ``paths["other-ca.pem"]``.

    ``hosts`` are the server certificate's SANs (DNS names or IP addresses): every name clients dial.
    """
    if not hosts:
        raise ValueError("the server certificate needs at least one host name or address")
    for name in clients:
        if not _NAME.match(name) or name in RESERVED:
            raise ValueError(f"bad client name {name[:80]!r}: letters, digits, '_', '.', '-' "
                             f"(not {', '.join(RESERVED)})")
    if len(set(clients)) != len(clients):
        raise ValueError(f"client names repeat: {clients}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    def save(stem: str, pair: tuple[x509.Certificate, Key]) -> None:
        paths[f"{stem}.pem"] = _write_cert(out / f"{stem}.pem", pair[0])
        paths[f"{stem}.key"] = _write_key(out / f"{stem}.key", pair[1])

    ca = _make_ca("kws dev CA", days)
    save("ca", ca)
    save("server", _make_leaf(hosts[0], ca, days, tuple(hosts)))
    for name in clients:
        save(name, _make_leaf(name, ca, days, None))
    other = _make_ca("kws unrelated CA", days)
    save("other-ca", other)
    save("other-client", _make_leaf("edge", other, days, None))  # a known name, from the wrong CA
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Create a development CA, server and client certificates "
                                             "(for tests and local use; a deployment brings its own CA)")
    ap.add_argument("--out", default="certs", help="directory to write (default %(default)s/; files are overwritten)")
    ap.add_argument("--host", action="append", default=None,
                    help=f"another name or address clients dial, added to the server certificate's "
                         f"{', '.join(DEFAULT_HOSTS)}; repeat (a Pi dials the server's LAN name or IP)")
    ap.add_argument("--client", action="append", default=None,
                    help=f"a client certificate to make (CN = the name); repeat "
                         f"(default: {', '.join(DEFAULT_CLIENTS)})")
    ap.add_argument("--days", type=int, default=VALID_DAYS, help="validity (default %(default)s days)")
    a = ap.parse_args(argv)
    try:
        paths = make_dev_pki(a.out, DEFAULT_HOSTS + tuple(a.host or ()), tuple(a.client or DEFAULT_CLIENTS), a.days)
    except ValueError as e:
        ap.error(str(e))
    print(f"wrote {len(paths)} files to {a.out}/: " + " ".join(sorted(p.name for p in paths.values())))


if __name__ == "__main__":
    main()
