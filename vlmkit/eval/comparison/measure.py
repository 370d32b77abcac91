"""How a comparison measures: latency after a warm-up, peak memory on a background sampler (CPU)
or from torch's allocator statistics (CUDA), and the sentences that say so in the report."""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from .report import Latency

SAMPLE_INTERVAL_S = 0.005  # how often the CPU memory sampler reads the resident set size


def _rss_reader() -> tuple[Callable[[], int], str] | None:
    """A function returning this process's resident set size in bytes, and how it reads it."""
    try:
        import psutil
    except ImportError:
        pass
    else:
        process = psutil.Process()
        return (lambda: int(process.memory_info().rss)), "psutil"
    if os.path.isfile("/proc/self/statm"):
        page = os.sysconf("SC_PAGE_SIZE")

        def read() -> int:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * page

        return read, "/proc/self/statm"
    return None


class _PeakMemory:
    """Peak memory above the level at entry. On CUDA, torch's allocator statistics; elsewhere the
    resident set size, sampled on a background thread every few milliseconds."""

    def __init__(self, device: torch.device, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.device = device
        self.interval_s = interval_s
        found = _rss_reader() if device.type == "cpu" else None
        self.reader = found[0] if found else None
        self.baseline = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
        elif self.reader is not None:
            self.baseline = self.peak = self.reader()
            self._thread = threading.Thread(target=self._sample, name="vlmkit-peak-memory", daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        assert self.reader is not None
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.reader())

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self.reader())  # type: ignore[misc]

    @property
    def peak_bytes(self) -> int | None:
        if self.device.type == "cuda":
            return max(0, torch.cuda.max_memory_allocated(self.device) - self.baseline)
        if self.reader is None:
            return None
        return max(0, self.peak - self.baseline)


def _memory_method(device: torch.device) -> str:
    if device.type == "cuda":
        return (
            "Peak memory: torch.cuda.max_memory_allocated during loading and all tasks, minus the memory "
            "allocated just before loading (tensors only: the CUDA context and the caching allocator's "
            "reserve are not counted)."
        )
    reader = _rss_reader() if device.type == "cpu" else None
    if reader is None:
        return "Peak memory: not measured (needs CUDA, psutil or /proc/self/statm)."
    ms = SAMPLE_INTERVAL_S * 1000
    return (
        f"Peak memory: the process's resident set size, read with {reader[1]} every {ms:g} ms on a "
        "background thread while the model loads and runs every task, minus its level just before "
        "loading (after the previous model was freed and glibc asked to return free memory). Memory the "
        "allocator kept from earlier work can be reused unseen, so read it as a lower bound."
    )


def _latency_method(runs: int) -> str:
    return (
        f"Latency: the median wall-clock time (time.perf_counter) of {runs} timed call{'s' * (runs != 1)} "
        "on one image after one untimed warm-up call. caption writes one caption with the model's "
        "default decoding; ask answers all questions about the image in one batched call; classify "
        "scores the image against every label, whose text embeddings are computed once per model beforehand "
        "(not timed). Images are "
        "decoded once beforehand, so decoding is not timed."
    )


def _free_memory(device: torch.device) -> None:
    """Collect garbage and hand freed memory back, so the next model's baseline starts low."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass  # not glibc


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
        except OSError:
            pass
        threads = torch.get_num_threads()
        return f"{name}, {threads} thread{'s' * (threads != 1)}"
    return device.type


def _timed(call: Callable[[], Any], runs: int, device: torch.device) -> tuple[Any, Latency]:
    """Call once untimed (warm-up), then ``runs`` times timed; return the last result."""

    def once() -> tuple[Any, float]:
        start = time.perf_counter()
        result = call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return result, time.perf_counter() - start

    result, warmup = once()
    times = []
    for _ in range(runs):
        result, seconds = once()
        times.append(seconds)
    return result, Latency(statistics.median(times), tuple(times), warmup)
