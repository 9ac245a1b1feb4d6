"""A throw-away PKI for TLS tests, made with the ``openssl`` command line.

Two unrelated certificate authorities: ``ca`` signs the broker's certificate (SAN
``DNS:localhost``, ``IP:127.0.0.1``) and a client certificate; ``other_ca`` signs nothing
the broker uses, so a client that trusts only it must reject the broker. Keys are P-256
(fast to make); certificates carry the extensions a strict verifier expects (CA basic
constraints and key usage, key identifiers, extended key usage on the leaves).
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Certificates", "make_certificates"]

_DAYS = "2"
_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
_CA_EXTENSIONS = [
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
]


@dataclass(frozen=True)
class Certificates:
    """Paths of the PEM files made by :func:`make_certificates`."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("openssl is not installed")
    done = subprocess.run(
        [openssl, *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{done.stderr}")


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
        "req", "-x509", *_EC, *_CA_EXTENSIONS,
        "-keyout", key.name, "-out", cert.name, "-subj", f"/CN=edge-agent test {name}",
        "-days", _DAYS,
        cwd=directory,
    )  # fmt: skip
    return cert, key


def _make_leaf(
    directory: Path, name: str, *, ca: tuple[Path, Path], extensions: list[str]
) -> tuple[Path, Path]:
    cert, key, csr = (directory / f"{name}{ext}" for ext in (".crt", ".key", ".csr"))
    ext_file = directory / f"{name}.ext"
    ext_file.write_text(
        "\n".join(
            [
                "basicConstraints=critical,CA:FALSE",
                "keyUsage=critical,digitalSignature",
                "subjectKeyIdentifier=hash",
                "authorityKeyIdentifier=keyid",
                *extensions,
            ]
        )
        + "\n"
    )
    _openssl(
        "req", "-new", *_EC, "-keyout", key.name, "-out", csr.name,
        "-subj", f"/CN=edge-agent test {name}",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr.name, "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-set_serial", str(secrets.randbits(63) + 1), "-days", _DAYS,
        "-extfile", ext_file.name, "-out", cert.name,
        cwd=directory,
    )  # fmt: skip
    return cert, key


def make_certificates(directory: Path) -> Certificates:
    """Make a CA, a server and a client certificate it signs, and an unrelated CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _make_ca(directory, "ca")
    other_ca, _ = _make_ca(directory, "other-ca")
    server_cert, server_key = _make_leaf(
        directory,
        "server",
        ca=ca,
        extensions=["subjectAltName=DNS:localhost,IP:127.0.0.1", "extendedKeyUsage=serverAuth"],
    )
    client_cert, client_key = _make_leaf(
        directory, "client", ca=ca, extensions=["extendedKeyUsage=clientAuth"]
    )
    return Certificates(
        ca=ca[0],
        server_cert=server_cert,
        server_key=server_key,
        client_cert=client_cert,
        client_key=client_key,
        other_ca=other_ca,
    )
