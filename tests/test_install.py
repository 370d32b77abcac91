"""scripts/apt-install.sh (what `scripts/install.sh test` runs for chromium and Java) waits for
another apt or dpkg process's lock, saying so, instead of failing at once. apt-get itself is a fake
on PATH that records its arguments; the lock is a file this test locks as dpkg would (fcntl)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "apt-install.sh"


def _fake_apt(tmp_path: Path) -> tuple[dict[str, str], Path]:
    calls = tmp_path / "calls.txt"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "apt-get"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHON": sys.executable}
    return env, calls


def test_waits_for_a_held_lock_then_installs(tmp_path: Path) -> None:
    env, calls = _fake_apt(tmp_path)
    lock = tmp_path / "lock-frontend"
    lock.touch()
    holder = open(lock, "a")  # noqa: SIM115 - held across the thread below
    fcntl.lockf(holder, fcntl.LOCK_EX)  # another "apt" holds it ...
    release = threading.Timer(3.0, holder.close)  # ... for 3 s (closing the file drops an fcntl lock)
    release.start()
    done = subprocess.run(["bash", str(SCRIPT), "chromium"], env={**env, "VLMKIT_APT_LOCKS": str(lock), "VLMKIT_APT_WAIT": "60"},
                          capture_output=True, text=True, timeout=120)
    release.join()
    assert done.returncode == 0, done.stderr
    assert f"another apt or dpkg process holds {lock}; waiting for it (up to 60 s)" in done.stderr
    assert f"{lock} is free after " in done.stderr
    assert calls.read_text().splitlines() == ["-o DPkg::Lock::Timeout=60 update -qq", "-o DPkg::Lock::Timeout=60 install -y -qq chromium"]


def test_gives_up_with_a_message_when_the_lock_stays_held(tmp_path: Path) -> None:
    env, calls = _fake_apt(tmp_path)
    lock = tmp_path / "lock"
    lock.touch()
    with open(lock, "a") as holder:
        fcntl.lockf(holder, fcntl.LOCK_EX)
        done = subprocess.run(["bash", str(SCRIPT), "chromium"], env={**env, "VLMKIT_APT_LOCKS": str(lock), "VLMKIT_APT_WAIT": "2"},
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert f"{lock} is still held after 2 s; let that process finish, then run this again" in done.stderr
    assert not calls.exists()  # apt-get never ran


def test_a_free_lock_costs_nothing(tmp_path: Path) -> None:
    env, calls = _fake_apt(tmp_path)
    lock = tmp_path / "lock"
    lock.touch()
    done = subprocess.run(["bash", str(SCRIPT), "default-jre-headless"], env={**env, "VLMKIT_APT_LOCKS": f"{lock} {tmp_path / 'absent'}"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == ""
    assert calls.read_text().splitlines()[-1] == "-o DPkg::Lock::Timeout=600 install -y -qq default-jre-headless"
