"""Small file systems made by a test, to break storage for real: a tmpfs that fills up,
a loop-mounted ext4 that is remounted read-only. Mounting needs root: tests that use
these are skipped (with the reason) otherwise."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def need_root_mounts() -> None:
    """Skip the test unless it may mount file systems."""
    if os.geteuid() != 0:
        pytest.skip("storage faults need root: the test mounts a tmpfs or a loop device")
    if shutil.which("mount") is None:
        pytest.skip("no mount(8) here")


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def tmpfs(where: Path, *, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. ``"2m"``) mounted at ``where`` for the block."""
    need_root_mounts()
    where.mkdir(parents=True, exist_ok=True)
    try:
        _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where))
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot mount a tmpfs here: {e.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True, timeout=30)


@contextlib.contextmanager
def loop_ext4(where: Path, *, size_mb: int = 16) -> Iterator[Path]:
    """An ext4 file system in a file, loop-mounted at ``where`` with
    ``errors=remount-ro`` as an SD card's root usually is."""
    need_root_mounts()
    image = where.with_name(where.name + ".img")
    with open(image, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    where.mkdir(parents=True, exist_ok=True)
    try:
        _run("mkfs.ext4", "-q", "-F", str(image))
        _run("mount", "-o", "loop,errors=remount-ro", str(image), str(where))
    except (subprocess.CalledProcessError, FileNotFoundError) as e:
        image.unlink(missing_ok=True)
        pytest.skip(f"cannot loop-mount an ext4 image here: {e}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True, timeout=30)
        image.unlink(missing_ok=True)


def remount(where: Path, options: str) -> None:
    """``mount -o remount,OPTIONS WHERE`` (e.g. a tmpfs's ``size=64m``). A remount
    ``ro`` is refused while a file is open for writing: see :func:`emergency_read_only`."""
    _run("mount", "-o", f"remount,{options}", str(where))


def emergency_read_only(where: Path) -> None:
    """Make the ext4 at ``where`` fail as an SD card does: an error with
    ``errors=remount-ro`` turns it read-only under its open files, until unmounted."""
    source = subprocess.run(
        ["findmnt", "-no", "SOURCE", str(where)],
        check=True,
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.strip()
    trigger = Path("/sys/fs/ext4") / Path(source).name / "trigger_fs_error"
    if not trigger.exists():
        pytest.skip(f"this kernel has no {trigger}")
    trigger.write_text("edge-agent test: a failing SD card")


def fill(where: Path, *, leave_bytes: int = 0) -> Path:
    """Fill the file system at ``where`` up to ``leave_bytes`` free; returns the filler."""
    filler = where / "filler"
    st = os.statvfs(where)
    free = st.f_bavail * st.f_frsize - leave_bytes
    with open(filler, "wb", buffering=0) as f:
        chunk = b"\0" * (1 << 16)
        while free > 0:
            try:
                f.write(chunk[: min(free, len(chunk))])
            except OSError:
                break
            free -= len(chunk)
    return filler
