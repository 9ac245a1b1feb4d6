"""A newcomer's first minutes, on a truly fresh Debian 12: only git and make installed.

A minimal Debian bookworm (``debootstrap --variant=minbase --include=git,make``: no
Python, no gcc, no Python headers — what a fresh Raspberry Pi OS Lite or minimal Debian
has, or less) is made once and cached in ``$EDGE_AGENT_TEST_CACHE`` (default
``/var/cache/edge-agent-tests``) as ``fresh-bookworm-<key>``, apart from
``tests/deploy/test_nspawn.py``'s root file system so that the two never race. Each run
mounts an overlay on it (a throw-away upper layer: the cache is never written to), and in
a ``chroot`` there, as a newcomer would:

1. ``git clone`` this checkout's committed ``HEAD`` (uncommitted changes are not tested);
2. ``make venv``: it must ``apt-get install`` what it needs (python3, python3-venv,
   mosquitto) and ``pip install`` the rest, compiling nothing;
3. ``edge-agent read --simulate -c config/demo.yaml`` prints readings;
4. ``edge-agent demo``: shows a reading within 20 s; every command it suggests at the top
   of its screen runs there (``edge-agent watch``, ``edge-agent send``); Ctrl-C (SIGINT to
   its process group, as a terminal sends it) stops it with status 0;
5. a slice of the tests runs with the dev tools ``make venv`` installed;
6. there is still no compiler and no ``Python.h``.

apt and pip inside reach the package registries this machine does: the host's apt
sources (and the ``Acquire::`` settings of ``/etc/apt/apt.conf.d``), ``resolv.conf``, CA
bundle, pip configuration files and ``PIP_*`` variables are copied in, and local
directories they name (a wheelhouse, a file:// index) are bound read-only at the same
path. Downloads are cached between runs (``fresh-cache/apt``, ``fresh-cache/pip``), so a
warm run downloads nothing twice. One run at a time (a lock): they share those caches.

It takes minutes (measured here: ~4.5 min warm, ~6 min with nothing cached, most of it
``make venv``), so ``make test`` skips it: ``make test-fresh`` runs it
(``EDGE_AGENT_TEST_FRESH=1``), and so does ``.ci/run``. Needs root, debootstrap, chroot
and overlayfs; skipped with the reason otherwise.
"""

from __future__ import annotations

import configparser
import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.debootstrap import CACHE, cached_debootstrap

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
INCLUDE = ["git", "make"]
#: Bump when the post-debootstrap preparation changes: it is part of the cache key.
PREPARATION = 1
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
HOME = "/root"
CHECKOUT = f"{HOME}/pi-edge-agent"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
LOCAL_CA = Path("/usr/local/share/ca-certificates/edge-agent-test-host.crt")
PIP_CONFIGS = [Path("/etc/pip.conf"), Path("/etc/xdg/pip"), Path.home() / ".config/pip"]
TOOLS: dict[str, str] = {}


def _missing_prerequisite() -> str | None:
    if os.environ.get("EDGE_AGENT_TEST_FRESH") != "1":
        return "the fresh-Debian test runs with `make test-fresh` (EDGE_AGENT_TEST_FRESH=1)"
    if sys.platform != "linux":
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root (debootstrap, mount, chroot)"
    search = f"{os.environ.get('PATH', '')}:{PATH}"
    for tool, package in [
        ("debootstrap", "debootstrap"),
        ("chroot", "coreutils"),
        ("mount", "mount"),
        ("umount", "mount"),
        ("git", "git"),
    ]:
        found = shutil.which(tool, path=search)
        if found is None:
            return f"{tool} is not installed (Debian package {package}; `make test-deps`)"
        TOOLS[tool] = found
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlayfs"
    return None


_reason = _missing_prerequisite()
if _reason is not None:
    pytest.skip(_reason, allow_module_level=True)


# -- the cached root file system ----------------------------------------------------------
def cached_rootfs() -> Path:
    return cached_debootstrap(
        "fresh-bookworm",
        include=INCLUDE,
        preparation=PREPARATION,
        hostname="fresh-pi",
        debootstrap=TOOLS["debootstrap"],
    )


# -- the host's registries, as the chroot sees them ---------------------------------------
def _local_paths(value: str) -> list[Path]:
    """Directories on this machine that a pip setting names (``/opt/wheels``,
    ``file:///opt/pypi/simple``), as the directory two levels under ``/`` that holds each
    (``/opt/pypi``: a file:// index links to files beside its ``simple/``)."""
    found = []
    for word in value.split():
        path = Path(word.removeprefix("file://"))
        if path.is_absolute() and path.is_dir() and len(path.parts) >= 3:
            top = Path(*path.parts[:3])
            if top.parts[1] not in ("etc", "proc", "sys", "dev", "run", "tmp", "root", "home"):
                found.append(top)
    return found


def pip_environment() -> tuple[list[tuple[Path, Path]], list[Path], dict[str, str]]:
    """What pip on this machine is configured with: (config files to copy, as (host,
    inside) pairs; local directories to bind read-only; ``PIP_*`` variables)."""
    files: list[tuple[Path, Path]] = []
    for config in PIP_CONFIGS:
        if config.is_file():
            files.append((config, config))
        elif config.is_dir():
            files += [(f, f) for f in sorted(config.iterdir()) if f.is_file()]
    directories: set[Path] = set()
    for host, _ in files:
        if host.suffix != ".conf":
            continue
        parser = configparser.ConfigParser(interpolation=None)
        with contextlib.suppress(configparser.Error):
            parser.read(host)
        for section in parser.sections():
            for value in parser[section].values():
                directories.update(_local_paths(value))
    env = {k: v for k, v in os.environ.items() if k.startswith("PIP_")}
    for value in env.values():
        directories.update(_local_paths(value))
    return files, sorted(directories), env


def copy_registry_config(root: Path, pip_files: list[tuple[Path, Path]]) -> None:
    """The host's apt sources and ``Acquire::`` settings, resolver, CA bundle and pip
    configuration, into the chroot (its upper layer)."""
    host_sources = [p for p in Path("/etc/apt/sources.list.d").glob("*") if p.is_file()]
    if host_sources or Path("/etc/apt/sources.list").exists():
        (root / "etc/apt/sources.list").unlink(missing_ok=True)  # debootstrap's own
        for source in host_sources:
            shutil.copy2(source, root / "etc/apt/sources.list.d" / source.name)
        if Path("/etc/apt/sources.list").exists():
            shutil.copy2("/etc/apt/sources.list", root / "etc/apt/sources.list")
    for conf in Path("/etc/apt/apt.conf.d").glob("*"):
        if conf.is_file() and "Acquire::" in conf.read_text(errors="replace"):
            shutil.copy2(conf, root / "etc/apt/apt.conf.d" / conf.name)
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.write_bytes(Path("/etc/resolv.conf").read_bytes())
    if CA_BUNDLE.exists():
        # Where pip looks, and as a local CA, so that Debian's ca-certificates (installed
        # along the way) keeps it in the bundle it rebuilds.
        for dest in (CA_BUNDLE, LOCAL_CA):
            (root / dest.parent.relative_to("/")).mkdir(parents=True, exist_ok=True)
            shutil.copy2(CA_BUNDLE, root / dest.relative_to("/"))
    for host, inside in pip_files:
        dest = root / inside.relative_to("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(host, dest)


# -- the chroot ---------------------------------------------------------------------------
class Chroot:
    """An overlay on the cached root file system, with /proc, the download caches and the
    host's local package directories mounted; :meth:`close` undoes all of it, and kills
    whatever still runs inside."""

    def __init__(self, rootfs: Path, workdir: Path) -> None:
        self.workdir = workdir
        self.root = workdir / "root"
        self.mounts: list[Path] = []
        files, directories, self.pip_env = pip_environment()
        try:
            for d in ("upper", "ovl", "root"):
                (workdir / d).mkdir()
            self._mount(
                self.root,
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={rootfs},upperdir={workdir / 'upper'},workdir={workdir / 'ovl'}",
            )
            self._mount(self.root / "proc", "-t", "proc", "proc")
            apt_cache = CACHE / "fresh-cache/apt"
            (apt_cache / "partial").mkdir(parents=True, exist_ok=True)
            self._bind(apt_cache, "/var/cache/apt/archives")
            pip_cache = CACHE / "fresh-cache/pip"
            pip_cache.mkdir(parents=True, exist_ok=True)
            self._bind(pip_cache, f"{HOME}/.cache/pip")
            for directory in directories:
                self._bind(directory, str(directory), read_only=True)
            copy_registry_config(self.root, files)
        except BaseException:
            self.close()
            raise

    def _mount(self, where: Path, *args: str) -> None:
        where.mkdir(parents=True, exist_ok=True)
        subprocess.run([TOOLS["mount"], *args, str(where)], check=True, capture_output=True)
        self.mounts.append(where)

    def _bind(self, host: Path, inside: str, *, read_only: bool = False) -> None:
        where = self.root / inside.lstrip("/")
        self._mount(where, "--bind", str(host))
        if read_only:
            subprocess.run(
                [TOOLS["mount"], "-o", "remount,bind,ro", str(where)],
                check=True,
                capture_output=True,
            )

    def command(self, script: str) -> list[str]:
        env = [f"{k}={v}" for k, v in self.pip_env.items()]
        return [
            TOOLS["chroot"],
            str(self.root),
            "/usr/bin/env",
            "-i",
            f"PATH={PATH}",
            f"HOME={HOME}",
            "LANG=C.UTF-8",
            "TERM=dumb",
            *env,
            "/bin/bash",
            "-c",
            script,
        ]

    def run(self, script: str, *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(script),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def must(self, script: str, *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = self.run(script, timeout=timeout)
        output = result.stdout[-6000:] + result.stderr[-6000:]
        assert result.returncode == 0, f"{script!r} exited {result.returncode}:\n{output}"
        return result

    def processes(self) -> list[int]:
        """Every process whose root directory is this chroot."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if os.readlink(entry / "root") == str(self.root):
                    pids.append(int(entry.name))
        return pids

    def close(self) -> None:
        for _ in range(50):
            pids = self.processes()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        for where in reversed(self.mounts):
            umount = [TOOLS["umount"], str(where)]
            if subprocess.run(umount, check=False, capture_output=True).returncode != 0:
                subprocess.run([*umount, "--lazy"], check=False, capture_output=True)
        self.mounts.clear()


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chroot]:
    """A chroot on the cached fresh Debian, one test module at a time on this machine."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".fresh.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rootfs = cached_rootfs()
        chroot = Chroot(rootfs, tmp_path_factory.mktemp("fresh"))
        try:
            yield chroot
        finally:
            chroot.close()


# -- the newcomer -------------------------------------------------------------------------
def timing(name: str, seconds: float) -> None:
    """How long a step took, on stdout (``pytest -s``) and in ``fresh-timings.log``."""
    line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {name} {seconds}"
    print(line)
    with open(CACHE / "fresh-timings.log", "a") as log:
        log.write(line + "\n")


def test_clone_make_venv_read_and_demo_with_no_compiler(fresh: Chroot, tmp_path: Path) -> None:
    started = time.monotonic()
    # Before: nothing but git and make.
    assert fresh.run("command -v python3").returncode != 0
    assert fresh.run("command -v gcc || command -v cc").returncode != 0
    fresh.must("git --version && make --version")

    upstream = fresh.root / "root/upstream.git"
    subprocess.run(
        [TOOLS["git"], "clone", "--quiet", "--bare", "--no-local", str(ROOT), str(upstream)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    fresh.must(f"git clone --quiet {HOME}/upstream.git {CHECKOUT}")
    head = subprocess.run(
        [TOOLS["git"], "-C", str(ROOT), "rev-parse", "HEAD"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert fresh.must(f"git -C {CHECKOUT} rev-parse HEAD").stdout.strip() == head

    t = time.monotonic()
    made = fresh.must(f"cd {CHECKOUT} && make venv", timeout=1200)
    timing("make_venv_s", round(time.monotonic() - t, 1))
    assert "installing Debian packages:" in made.stdout
    assert "gcc" not in made.stdout + made.stderr.replace("no gcc", "")

    # One-shot read: the demo config's DHT fails 10 % of reads on purpose; only it may fail.
    read = fresh.run(f"cd {CHECKOUT} && .venv/bin/edge-agent read --simulate -c config/demo.yaml")
    assert read.returncode in (0, 1), read.stderr
    readings = [line for line in read.stdout.splitlines() if line.startswith("{")]
    assert any('"sensor":"air"' in r for r in readings), read.stdout
    if read.returncode == 1:
        assert all(line.startswith("shed: ") for line in read.stderr.splitlines()), read.stderr

    run_the_demo(fresh)

    pytest_slice = ".venv/bin/pytest -q -p no:cacheprovider tests/runtime tests/cli/test_cli.py"
    tests = fresh.must(f"cd {CHECKOUT} && {pytest_slice}", timeout=600)
    assert " passed" in tests.stdout

    # After: still no compiler, no Python headers.
    assert fresh.run("command -v gcc || command -v cc").returncode != 0
    assert fresh.run("ls /usr/include/python3*/Python.h").returncode != 0
    timing("fresh_total_s", round(time.monotonic() - started, 1))


def run_the_demo(fresh: Chroot) -> None:
    """``edge-agent demo`` (as ``make demo`` runs it) until a reading is on screen; then
    each command it suggests; then Ctrl-C."""
    demo = subprocess.Popen(
        fresh.command(f"cd {CHECKOUT} && exec .venv/bin/edge-agent demo"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a terminal's Ctrl-C reaches all
    )
    screen: list[str] = []
    seen = threading.Condition()

    def read() -> None:
        assert demo.stdout is not None
        for line in demo.stdout:
            with seen:
                screen.append(line.rstrip("\n"))
                seen.notify_all()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        t = time.monotonic()
        with seen:
            reading = seen.wait_for(
                lambda: any(re.match(r"edge/demo-pi/sensor/air +\d+ .*#\d+", s) for s in screen),
                timeout=20,
            )
        assert reading, "no reading on the demo's screen in 20 s:\n" + "\n".join(screen[-40:])
        timing("demo_first_reading_s", round(time.monotonic() - t, 1))
        top = screen[: screen.index("")]  # the header of the first screen
        suggested = [
            line.split(None, 2)[-1] for line in top if re.match(r"  (watch it|switch \w+):", line)
        ]
        assert len(suggested) == 2, top
        watch, send = suggested
        assert watch.startswith(".venv/bin/edge-agent watch "), watch
        assert send.startswith(".venv/bin/edge-agent send "), send
        watched = fresh.must(f"cd {CHECKOUT} && timeout --preserve-status -s INT 4 {watch}")
        assert "edge/demo-pi/status online" in watched.stdout
        sent = fresh.must(f"cd {CHECKOUT} && {send}")
        assert '"ok": true' in sent.stdout
        os.killpg(demo.pid, signal.SIGINT)
        assert demo.wait(30) == 0, "\n".join(screen[-40:])
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(10)
        reader.join(5)
        if demo.stdout is not None:
            demo.stdout.close()
    assert any("demo stopped" in line for line in screen[-5:]), screen[-10:]
