"""How the benches time a pass and account for the machine's CPU (Linux ``/proc``; None elsewhere).

Every timed pass also reports how many CPU cores this process and all *other* processes kept busy:
on a shared machine competing load distorts the figures, so the benches warn about it and can wait
for the machine to go idle first (``wait_until_idle``, their ``--wait-idle``).
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


def machine_busy_seconds() -> float | None:
    """CPU-seconds all processes on this machine have used so far (Linux ``/proc/stat``), else None."""
    try:
        with open("/proc/stat") as stat:
            # user nice system idle iowait irq softirq steal
            ticks = [int(v) for v in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU-seconds (all threads) this process has used so far."""
    times = os.times()
    return times.user + times.system


def process_cpu_seconds(pid: int | None) -> float | None:
    """CPU-seconds (all threads) of process ``pid``; this process when None."""
    if pid is None:
        return own_cpu_seconds()
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Pass:
    seconds: float
    own_cores: float  # CPU-seconds this process used per wall second (all its threads)
    other_cores: float | None  # the same for every other process on the machine: competing load


def timed(fn: Callable[[], T], wait_idle: float = 0.0) -> tuple[Pass, T]:
    """Run ``fn`` once (after an optional wait for an idle machine); its wall time and CPU use."""
    gc.collect()
    waited = wait_until_idle(wait_idle)
    if waited > 2.5:
        print(f"  (waited {waited:.0f} s for other processes to go idle)")
    busy0, own0 = machine_busy_seconds(), own_cpu_seconds()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    busy1, own1 = machine_busy_seconds(), own_cpu_seconds()
    own = (own1 - own0) / seconds
    other = None if busy0 is None or busy1 is None else max(0.0, (busy1 - busy0) / seconds - own)
    return Pass(seconds, own, other), result


def wait_until_idle(max_wait: float, threshold: float = 0.15, window: float = 2.0) -> float:
    """Wait (at most ``max_wait`` s) until all other processes together use < ``threshold`` cores
    over a ``window``-second sample; return the seconds waited. No-op where /proc/stat is missing."""
    start = time.perf_counter()
    if max_wait <= 0 or machine_busy_seconds() is None:
        return 0.0
    while True:
        busy0, own0, t0 = machine_busy_seconds(), own_cpu_seconds(), time.perf_counter()
        time.sleep(window)
        elapsed = time.perf_counter() - t0
        others = ((machine_busy_seconds() or 0.0) - (busy0 or 0.0) - (own_cpu_seconds() - own0)) / elapsed
        waited = time.perf_counter() - start
        if others < threshold or waited >= max_wait:
            return waited


def describe_pass(p: Pass) -> str:
    other = "" if p.other_cores is None else f", other processes {p.other_cores:.2f}"
    return f"CPU cores busy: this process {p.own_cores:.2f}{other}"


def per_item_ms(fn: Callable[[], object], items: int) -> float:
    """Wall milliseconds per item of one call of ``fn`` over ``items`` items."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0 / items


def print_machine() -> None:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(
        f"cpu cores: {os.cpu_count()}; load average (1, 5, 15 min): "
        f"{', '.join(f'{v:.2f}' for v in load) if load else 'n/a'}"
    )
