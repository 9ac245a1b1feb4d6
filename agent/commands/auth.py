"""Signed commands (CONTRACT section 13): the envelope, its signature, and the keys.

A signed command is a JSON envelope on the set topic::

    {"signed": "<the command's JSON, as a string>", "kid": "ops", "sig": "<base64url>"}

The signature (HMAC-SHA256 with a shared secret, or Ed25519) covers the UTF-8 bytes of
``<topic> + "\\n" + <signed>``: a command signed for one output's set topic is refused on
any other output's or device's. The envelope is checked before anything reads the inner
command (:func:`open_envelope` returns its bytes only once the signature holds), the
comparison of HMACs is constant-time (``hmac.compare_digest``), and ``cryptography`` is
imported only when an Ed25519 key is configured or used.

Key files: an HMAC secret is its base64url text (at least 32 bytes once decoded; ``edge-agent
keygen`` writes 32 random bytes); an Ed25519 key is PEM (``PUBLIC KEY`` on the agent,
``PRIVATE KEY`` on the sender).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

#: The shortest HMAC secret accepted (CONTRACT 13: >= 32 random bytes).
MIN_SECRET_BYTES = 32
KID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
ENVELOPE_KEYS = frozenset({"signed", "kid", "sig"})
#: An HMAC-SHA256 tag is 32 bytes, an Ed25519 signature 64; anything longer is not one.
MAX_SIG_CHARS = 100


class KeyFileError(ValueError):
    """A key file that cannot be used (its message never quotes the key)."""


class Unauthenticated(Exception):
    """An envelope whose signature does not hold, or that is not an envelope."""


@dataclass(frozen=True)
class Key:
    """A key by which commands are verified (or, on the sender, signed)."""

    kind: Literal["hmac-sha256", "ed25519"]
    #: The HMAC secret; empty for Ed25519.
    secret: bytes = b""
    #: The Ed25519 key object (public on the agent, private on a sender).
    ed25519: Any = None

    @property
    def fingerprint(self) -> bytes:
        """Bytes that change with the key (for ``config_sha256``; the HMAC secret itself
        is only ever used keyed)."""
        if self.kind == "hmac-sha256":
            return self.secret
        from cryptography.hazmat.primitives import serialization

        public = self.ed25519.public_key() if hasattr(self.ed25519, "public_key") else self.ed25519
        raw: bytes = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return raw


def parse_key(data: bytes) -> Key:
    """The key in a key file's bytes.

    Raises:
        KeyFileError: saying what is wrong, never what the file holds.
    """
    text = data.strip()
    if text.startswith(b"-----BEGIN"):
        return _ed25519_key(text)
    try:
        secret = _b64decode(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise KeyFileError(
            "not a key: an HMAC secret is base64url text, an Ed25519 key PEM"
        ) from None
    if len(secret) < MIN_SECRET_BYTES:
        raise KeyFileError(
            f"an HMAC secret must be at least {MIN_SECRET_BYTES} bytes, this one has "
            f"{len(secret)} (make one with: edge-agent keygen)"
        )
    return Key("hmac-sha256", secret=secret)


def _ed25519_key(pem: bytes) -> Key:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import (
            Ed25519PrivateKey,
            Ed25519PublicKey,
        )
    except ImportError:
        raise KeyFileError(
            "an Ed25519 key needs the cryptography package: pip install "
            "'pi-edge-agent[ed25519]' (on Raspberry Pi OS: apt install python3-cryptography)"
        ) from None
    key: Any
    try:
        if b"PRIVATE KEY" in pem:
            key = serialization.load_pem_private_key(pem, password=None)
        else:
            key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise KeyFileError("not a PEM key that can be read") from None
    if not isinstance(key, Ed25519PrivateKey | Ed25519PublicKey):
        raise KeyFileError("a PEM key must be Ed25519")
    return Key("ed25519", ed25519=key)


def _b64decode(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*={0,2}", text):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as e:
        raise ValueError(str(e)) from None


def b64encode(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def signed_bytes(topic: str, signed: str) -> bytes:
    """What the signature covers: ``<topic>\\n<signed>`` in UTF-8."""
    return topic.encode("utf-8") + b"\n" + signed.encode("utf-8")


def sign_command(topic: str, command_json: str, key: Key, kid: str) -> bytes:
    """The envelope that carries ``command_json`` signed for ``topic``.

    Args:
        topic: the set topic it will be published on (``<base>/output/<name>/set``).
        command_json: the command (with ``ts`` and ``nonce``), as JSON text.
        key: an HMAC secret, or an Ed25519 private key.
        kid: the id under which the agent knows the key.
    """
    message = signed_bytes(topic, command_json)
    if key.kind == "hmac-sha256":
        sig = hmac.new(key.secret, message, hashlib.sha256).digest()
    else:
        if not hasattr(key.ed25519, "sign"):
            raise KeyFileError("signing needs the Ed25519 private key, not the public one")
        sig = key.ed25519.sign(message)
    envelope = {"signed": command_json, "kid": kid, "sig": b64encode(sig)}
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class Envelope:
    """A signed command whose outer shape is right (the signature not yet checked)."""

    signed: str
    kid: str
    sig: str


def read_envelope(body: dict[str, Any]) -> Envelope:
    """The envelope in a JSON object that has a ``signed`` key.

    Raises:
        Unauthenticated: the object is not exactly an envelope.
    """
    if set(body) != ENVELOPE_KEYS:
        raise Unauthenticated("a signed command has exactly signed, kid and sig")
    signed, kid, sig = body["signed"], body["kid"], body["sig"]
    if not (isinstance(signed, str) and isinstance(kid, str) and isinstance(sig, str)):
        raise Unauthenticated("signed, kid and sig must be strings")
    if not KID.fullmatch(kid):
        raise Unauthenticated("kid is not a key id")
    if len(sig) > MAX_SIG_CHARS:
        raise Unauthenticated("sig is not a signature")
    return Envelope(signed=signed, kid=kid, sig=sig)


def open_envelope(topic: str, envelope: Envelope, keys: dict[str, Key]) -> bytes:
    """The signed command's bytes, once its signature over ``topic`` holds.

    Raises:
        Unauthenticated: unknown kid, a malformed or wrong signature.
    """
    key = keys.get(envelope.kid)
    if key is None:
        raise Unauthenticated("unknown key id")
    try:
        sig = _b64decode(envelope.sig)
    except ValueError:
        raise Unauthenticated("sig is not base64url") from None
    if b64encode(sig) != envelope.sig:
        # One signature, one spelling: no padding, no stray low bits in the last character.
        raise Unauthenticated("sig is not canonical base64url")
    try:
        message = signed_bytes(topic, envelope.signed)
    except UnicodeEncodeError:
        raise Unauthenticated("signed is not text") from None
    if key.kind == "hmac-sha256":
        expected = hmac.new(key.secret, message, hashlib.sha256).digest()
        if not hmac.compare_digest(expected, sig):
            raise Unauthenticated("the signature does not match")
    else:
        from cryptography.exceptions import InvalidSignature

        public = key.ed25519.public_key() if hasattr(key.ed25519, "sign") else key.ed25519
        try:
            public.verify(sig, message)
        except InvalidSignature:
            raise Unauthenticated("the signature does not match") from None
    return envelope.signed.encode("utf-8")


def new_nonce() -> str:
    """A nonce for a signed command: 32 random hex digits."""
    import secrets

    return secrets.token_hex(16)


def new_hmac_secret() -> str:
    """A fresh HMAC secret as key file text (32 random bytes, base64url)."""
    import secrets

    return b64encode(secrets.token_bytes(MIN_SECRET_BYTES)) + "\n"


def new_ed25519_pair() -> tuple[bytes, bytes]:
    """A fresh Ed25519 key pair as PEM: (private, public)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


__all__ = [
    "Envelope",
    "Key",
    "KeyFileError",
    "Unauthenticated",
    "open_envelope",
    "parse_key",
    "read_envelope",
    "sign_command",
]
