"""`stanfleet certs init`: a private CA and the server certificate.

Every port stanfleet listens on uses TLS with a certificate from this CA.
Devices get the CA in DER form (MicroPython's ssl wants DER) and check the
server's name; services load the PEM. The CA key stays in the certs
directory and is needed only to issue more certificates.

Files written (mode 0600 for keys): ca.pem, ca.der, ca.key, server.pem,
server.key.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import CommandError

# Inside the security directory, where `streaming-server --security-dir` and
# `stanfleet up` look for them.
DEFAULT_DIR = "stanfleet-data/security/certs"
CA_DAYS = 3650
SERVER_DAYS = 825  # the longest validity common TLS clients accept


@dataclass
class CertPaths:
    directory: str

    def __getattr__(self, name: str) -> str:
        files = {"ca": "ca.pem", "ca_der": "ca.der", "ca_key": "ca.key",
                 "server": "server.pem", "server_key": "server.key"}
        if name in files:
            return os.path.join(self.directory, files[name])
        raise AttributeError(name)


def _key():
    # P-256: small enough for an ESP32's mbedTLS, and fast to verify.
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "stanfleet"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: str, data: bytes, private: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def init(directory: str, hosts: list[str], force: bool = False) -> CertPaths:
    paths = CertPaths(directory)
    if os.path.exists(paths.ca_key) and not force:
        raise CommandError(f"a CA already exists in {directory} (use --force to replace it: "
                           "every device then needs the new CA)")
    # The CA key lives here, and by default in the security directory, which
    # this may be the first to create: both private (0700).
    parent = os.path.dirname(os.path.abspath(directory))
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o700, exist_ok=True)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = _key()
    ca = (x509.CertificateBuilder()
          .subject_name(_name("stanfleet CA")).issuer_name(_name("stanfleet CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=CA_DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    server_key = _key()
    sans = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    server = (x509.CertificateBuilder()
              .subject_name(_name(hosts[0])).issuer_name(ca.subject)
              .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(minutes=5))
              .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
              .add_extension(x509.SubjectAlternativeName(sans), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    key_fmt = dict(encoding=pem, format=serialization.PrivateFormat.PKCS8,
                   encryption_algorithm=serialization.NoEncryption())
    _write(paths.ca, ca.public_bytes(pem))
    _write(paths.ca_der, ca.public_bytes(serialization.Encoding.DER))
    _write(paths.ca_key, ca_key.private_bytes(**key_fmt), private=True)
    _write(paths.server, server.public_bytes(pem))
    _write(paths.server_key, server_key.private_bytes(**key_fmt), private=True)
    return paths


def client_context(ca_file: str) -> ssl.SSLContext:
    """What every stanfleet client uses: verify the server against our CA, check its name."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def server_context(paths: CertPaths) -> ssl.SSLContext:
    return server_context_files(paths.server, paths.server_key)


def server_context_files(cert: str, key: str) -> ssl.SSLContext:
    """TLS for a port we serve (monitoring, artifacts) with our server certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    i = sub.add_parser("init", help="create a private CA and a server certificate")
    i.add_argument("--dir", default=DEFAULT_DIR, help="where to write (default: %(default)s)")
    i.add_argument("--host", action="append", default=None,
                   help="a name or IP the server is reached by (repeatable; default: "
                        "localhost and 127.0.0.1)")
    i.add_argument("--force", action="store_true", help="replace an existing CA")


def run(args: argparse.Namespace) -> int:
    hosts = args.host or ["localhost", "127.0.0.1"]
    paths = init(args.dir, hosts, args.force)
    print(f"CA and server certificate for {', '.join(hosts)} in {paths.directory}\n"
          f"  devices need: {paths.ca_der}\n  services need: {paths.ca}")
    return 0
