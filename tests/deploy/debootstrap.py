"""A Debian root file system made once with debootstrap and cached outside the repository.

Both deploy tests boot or chroot into one: tests/deploy/test_nspawn.py (systemd, the
agent's unit) and tests/deploy/test_fresh_debian.py (a newcomer's minimal Debian). Each
image is keyed on its package list and a preparation number, built in a temporary
directory next to its final place and renamed there when complete (the marker file is
inside), under a lock so that two runs do not both build it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

CACHE = Path(os.environ.get("EDGE_AGENT_TEST_CACHE", "/var/cache/edge-agent-tests"))
MIRROR = os.environ.get("EDGE_AGENT_TEST_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MARKER = ".edge-agent-ready"


def cached_debootstrap(
    name: str,
    *,
    include: Sequence[str],
    preparation: int,
    hostname: str,
    debootstrap: str,
) -> Path:
    """The ``--variant=minbase`` Debian with ``include`` installed, as
    ``$CACHE/<name>-<key>``; older ones of that name (other packages, half builds) are
    removed. Bump ``preparation`` when what is done after debootstrap changes."""
    key = hashlib.sha256(f"{SUITE} {' '.join(include)} {preparation}".encode()).hexdigest()
    target = CACHE / f"{name}-{key[:12]}"
    marker = target / MARKER
    if marker.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return target
        for stale in [*CACHE.glob(f"{name}-*"), *CACHE.glob(f".{name}-*")]:
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        building = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=CACHE))
        building.chmod(0o755)
        log = CACHE / f"{name}-debootstrap.log"
        with open(log, "w") as out:
            result = subprocess.run(
                [
                    debootstrap,
                    "--variant=minbase",
                    f"--include={','.join(include)}",
                    SUITE,
                    str(building),
                    MIRROR,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PATH": f"{PATH}:{os.environ.get('PATH', '')}"},
                timeout=900,
                check=False,
            )
        if result.returncode != 0:
            shutil.rmtree(building, ignore_errors=True)
            raise RuntimeError(f"debootstrap failed ({result.returncode}): see {log}")
        # What the Debian installer adds and debootstrap does not.
        (building / "etc/hosts").write_text(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        )
        (building / "etc/hostname").write_text(f"{hostname}\n")
        for deb in (building / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        (building / MARKER).write_text(f"{SUITE} {' '.join(include)}\n")
        building.rename(target)
    return target
