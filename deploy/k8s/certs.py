"""TLS certificates of the mesh's servers (NATS, Redis, PostgreSQL), issued from a CA.

Every connection to NATS (clients and the cluster routes), Redis and PostgreSQL is TLS
and every client verifies the server against the operator's CA. ``deploy.sh`` issues one
certificate per server from the CA the operator provides (``TLS_CA_CERT``/``TLS_CA_KEY``)
and stores it in the Secrets ``nats-tls``, ``redis-tls`` and ``postgres-tls`` (keys
``tls.crt``, ``tls.key``, ``ca.crt``); the CA certificate alone is the Secret ``mesh-ca``
in every namespace, mounted by the clients. Each certificate is valid for server and client
authentication: the NATS servers present theirs to each other on the routes (mTLS).

    uv run python deploy/k8s/certs.py ca DIR                    # a CA: DIR/ca.crt, DIR/ca.key
    uv run python deploy/k8s/certs.py issue CA_CRT CA_KEY DIR   # DIR/<server>/tls.{crt,key}
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NAMESPACE = "voicemesh"
VALID_DAYS = 365


def service_names(service: str, namespace: str = NAMESPACE) -> list[str]:
    """The DNS names a Service is reached by, short to fully qualified."""
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


#: The names each server's certificate carries: its Service's names, and for NATS the
#: per-server names of the routes (``nats-N.nats-headless``); ``localhost`` for probes.
SERVERS: dict[str, list[str]] = {
    "nats": [
        *service_names("nats"),
        *service_names("nats-headless"),
        *(f"*.{name}" for name in service_names("nats-headless")),
        "localhost",
    ],
    "redis": [*service_names("redis"), "localhost"],
    "postgres": [*service_names("postgres"), "localhost"],
}


#: Key usages a CA needs (every other usage off).
_CA_USAGES = {"digital_signature", "key_cert_sign", "crl_sign"}
_KEY_USAGES = (
    "digital_signature content_commitment key_encipherment data_encipherment key_agreement "
    "key_cert_sign crl_sign encipher_only decipher_only"
).split()
CertKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate(
    subject: str,
    issuer: x509.Name | None,
    signer: CertKey | None,
    days: int,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> tuple[bytes, bytes]:
    """A new key and its certificate for ``subject``, signed by ``signer`` (``None``: by
    itself): (certificate PEM, private key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    cert = builder.sign(signer or key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def make_ca(common_name: str = "voicemesh CA", days: int = VALID_DAYS) -> tuple[bytes, bytes]:
    """A self-signed CA: (certificate PEM, private key PEM)."""
    usage = x509.KeyUsage(**{u: u in _CA_USAGES for u in _KEY_USAGES})
    basic = x509.BasicConstraints(ca=True, path_length=0)
    return _certificate(common_name, None, None, days, [(basic, True), (usage, True)])


def issue(
    ca_cert_pem: bytes, ca_key_pem: bytes, names: list[str], days: int = VALID_DAYS
) -> tuple[bytes, bytes]:
    """A server (and route client) certificate for ``names`` (DNS names or IP addresses)."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, CertKey):
        raise ValueError("the CA key must be an EC or RSA private key")
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    extensions: list[tuple[x509.ExtensionType, bool]] = [
        (x509.SubjectAlternativeName(alt), False),
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.ExtendedKeyUsage(usage), False),
    ]
    return _certificate(names[0], ca_cert.subject, ca_key, days, extensions)


def write_server_certs(
    ca_cert_pem: bytes, ca_key_pem: bytes, out: Path, servers: dict[str, list[str]] = SERVERS
) -> None:
    """``out/<server>/{tls.crt,tls.key,ca.crt}`` for each server: one Secret's files each."""
    for server, names in servers.items():
        cert, key = issue(ca_cert_pem, ca_key_pem, names)
        folder = out / server
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tls.crt").write_bytes(cert)
        (folder / "tls.key").write_bytes(key)
        (folder / "tls.key").chmod(0o600)
        (folder / "ca.crt").write_bytes(ca_cert_pem)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    ca = commands.add_parser("ca", help="make a CA (for a rehearsal or a test cluster)")
    ca.add_argument("out", type=Path)
    servers = commands.add_parser("issue", help="issue the servers' certificates from a CA")
    servers.add_argument("ca_cert", type=Path)
    servers.add_argument("ca_key", type=Path)
    servers.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "ca":
        cert, key = make_ca()
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ca.crt").write_bytes(cert)
        (args.out / "ca.key").write_bytes(key)
        (args.out / "ca.key").chmod(0o600)
    else:
        write_server_certs(args.ca_cert.read_bytes(), args.ca_key.read_bytes(), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
