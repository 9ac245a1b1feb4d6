"""``info.config_sha256``: a fingerprint of the running config that gives no secret away.

A plain hash of the config file is a hash of its inline password: retained on
``<base>/info`` for anyone who may read it, it is checked against a word list offline in
seconds. So the fingerprint is the SHA-256 of the validated config (canonical JSON) in
which every secret is replaced by its HMAC-SHA256 under a random key kept in the state
directory (``config-digest.key``, 0600). It changes when a secret changes, as when any other
setting does, and without the key nothing can be tested against it. (It follows the
meaning of the config, not its bytes: a comment changes nothing.)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from pathlib import Path

import msgspec

from agent.config.model import Config

log = logging.getLogger(__name__)

KEY_FILE = "config-digest.key"
KEY_BYTES = 32


def config_digest(
    config: Config, key: bytes, *, extra_secrets: dict[str, bytes] | None = None
) -> str:
    """The fingerprint of ``config``: hex SHA-256, secrets only as keyed digests.

    Args:
        config: the validated config.
        key: the digest key (:func:`digest_key`).
        extra_secrets: secrets that are not in the config itself but belong to it (key
            files' contents), by name.
    """
    data = msgspec.to_builtins(config)
    mqtt = data.get("mqtt", {})
    if mqtt.get("password") is not None:
        mqtt["password"] = _keyed(key, str(mqtt["password"]).encode())
    for name, value in sorted((extra_secrets or {}).items()):
        data.setdefault("_secrets", {})[name] = _keyed(key, value)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _keyed(key: bytes, value: bytes) -> str:
    return "hmac-sha256:" + hmac.new(key, value, hashlib.sha256).hexdigest()


def digest_key(directory: Path) -> bytes:
    """The digest key in ``directory``, made (0600) the first time. When it can be neither
    read nor made, a key for this process only: the fingerprint then changes at restart."""
    path = directory / KEY_FILE
    try:
        key = path.read_bytes()
        if len(key) >= KEY_BYTES:
            return key
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("cannot read %s (%s): config_sha256 changes at each start", path, e.strerror)
        return secrets.token_bytes(KEY_BYTES)
    key = secrets.token_bytes(KEY_BYTES)
    try:
        tmp = path.with_name(f".{KEY_FILE}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:  # not fsynced: lost in a power cut, a new key is made
            f.write(key)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cannot write %s (%s): config_sha256 changes at each start", path, e.strerror)
    return key
