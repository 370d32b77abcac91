"""Approximate nearest-neighbour search in the image index: build time, memory, latency and recall.

What is measured
----------------
``--rows`` random ``--dim``-d unit vectors (float32) are written in batches to a LanceDB table with
the columns ``id`` (int64), ``path`` (string) and ``vector`` (fixed_size_list<float32>[dim]), and
the approximate index of the image index is built on it exactly as ``vlmkit.index.store`` builds
it: ``create_ann_index(table, ann_index_options(rows, dim))`` (IVF-PQ, cosine). Two kinds of data:

``uniform``
    directions uniformly distributed on the sphere (normalised standard normals). This is the
    worst case for every ANN method: a query's nearest neighbours are almost orthogonal to it
    (cosine ~0.15 at 1M x 512-d) and hardly closer than a random row (~0.0), so partitioning and
    quantisation carry little information.
``clustered``
    a Gaussian mixture, closer to real embedding collections: ``--centres`` random unit centres,
    each row a centre (chosen uniformly) plus isotropic noise of norm ~``--spread``, normalised
    (spread 0.75 puts a row at cosine ~0.8 from its centre, ~0.64 from rows of the same centre
    and ~0 from the others).

The script prints, for each kind of data, the mean cosine of a query to its 1st and 10th exact
neighbour and to a random row, so the difficulty of the data can be read off.

Queries are ``--queries`` further vectors drawn from the same distribution (not in the table).
Exact ground truth is a blocked numpy matrix product over the normalised matrix. Reported:

* write time and size on disk of the table; index build time, index size on disk; process RSS
  before the build, the peak RSS during it (``ru_maxrss`` after resetting the high-water mark with
  ``/proc/self/clear_refs``) and their difference; ``ru_maxrss`` of everything before the build;
* exact search: the numpy brute force (all queries at once, and one query at a time) and
  LanceDB's flat scan (``bypass_vector_index()``), p50 latency over ``--flat-queries`` queries
  and the flat scan's recall against numpy (a sanity check: ~1.0);
* the approximate search as ``vlmkit.index.search`` runs it --
  ``table.search(vec).distance_type("cosine").nprobes(ANN_NPROBES).refine_factor(ANN_REFINE)
  .limit(k)`` -- with p50/p99 latency of single queries (after ``--warmup`` queries) and
  recall@k (the fraction of the exact top k returned), for a sweep of nprobes x refine_factor
  (``--nprobes``, ``--refine``; refine 0 means no ``refine_factor`` call). Settings are timed
  round-robin per query, so slow drifts of a shared machine hit all of them alike. The row with
  the constants in ``vlmkit.index.store`` is marked ``*``; one more row runs those constants with
  ``limit(2k + 4)``, the number of rows ``vlmkit.index.search`` fetches for a top-k search.

The target of the issue is p50 <= 10 ms at recall@10 >= 0.95 for 1,000,000 x 512-d on a 2-core
machine; the summary says for each kind of data whether the current constants meet it, and which
settings of the sweep do.

How to run
----------
::

    python bench/index_ann.py                               # 1M x 512-d, uniform and clustered
    python bench/index_ann.py --rows 20000 --queries 100    # quick check (~1 minute)
    python bench/index_ann.py --data clustered --centres 8192 --spread 0.6
    python bench/index_ann.py --out-dir /tmp/ann-bench      # keep the tables
    python bench/index_ann.py --data clustered --sub-vectors 64 --nprobes 16,32,64  # tune the index

With ``--data both`` (the default) each kind of data runs in its own Python process, so its RSS
figures are its own, and the parent prints a combined summary. ``--partitions`` and ``--sub-vectors`` override the index's partition and PQ sub-vector counts
(by default those of ``ann_index_options``), for tuning it; ``--out-dir`` keeps the LanceDB
tables (by default a temporary directory, removed at the end). The full run needs ~2.3 GB of RAM
for the vectors plus what the build takes, and ~2.2 GB of disk per kind of data.

Every timed phase reports how many CPU cores this process and all *other* processes kept busy
(from ``/proc/stat``): competing load on a 2-core machine slows both the build and the queries.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
from _measure import machine_busy_seconds, own_cpu_seconds  # bench/ is sys.path[0] when run

from vlmkit.index.search import ANN_NPROBES, ANN_REFINE
from vlmkit.index.store import ANN_MIN_ROWS, ann_index_options, create_ann_index

TARGET_P50_MS = 10.0
TARGET_RECALL = 0.95


# --------------------------------------------------------------------------------------------------
# Machine load and memory
# --------------------------------------------------------------------------------------------------


class Load:
    """Wall time and CPU use of this process and of all others over a ``with`` block."""

    def __enter__(self) -> Load:
        self.busy0, self.own0, self.t0 = machine_busy_seconds(), own_cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0
        own = own_cpu_seconds() - self.own0
        busy1 = machine_busy_seconds()
        self.own_cores = own / self.seconds
        self.other_cores = (
            None
            if self.busy0 is None or busy1 is None
            else max(0.0, (busy1 - self.busy0 - own) / self.seconds)
        )

    def describe(self) -> str:
        other = "" if self.other_cores is None else f", other processes {self.other_cores:.2f}"
        return f"{self.seconds:.1f} s; CPU cores busy: this process {self.own_cores:.2f}{other}"


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_peak_rss() -> bool:
    """Reset the RSS high-water mark (``ru_maxrss``/VmHWM) to the current RSS; False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


def du_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def normalise(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_vectors(
    kind: str, n: int, dim: int, seed: int, centres: int, spread: float, chunk: int = 65536
) -> np.ndarray:
    """``n`` unit float32 vectors of the given kind, generated in chunks; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    means = normalise(rng.standard_normal((centres, dim), dtype=np.float32)) if kind == "clustered" else None
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        block = rng.standard_normal((stop - start, dim), dtype=np.float32)
        if means is not None:
            block *= np.float32(spread / np.sqrt(dim))
            block += means[rng.integers(centres, size=stop - start)]
        out[start:stop] = normalise(block)
    return out


def record_batches(vectors: np.ndarray, batch_rows: int) -> Iterator[pa.RecordBatch]:
    dim = vectors.shape[1]
    for start in range(0, len(vectors), batch_rows):
        block = vectors[start : start + batch_rows]
        ids = np.arange(start, start + len(block), dtype=np.int64)
        yield pa.RecordBatch.from_arrays(
            [
                pa.array(ids),
                pa.array([f"/photos/{i // 1000:04d}/IMG_{i:07d}.jpg" for i in ids.tolist()], pa.string()),
                pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1), pa.float32()), dim),
            ],
            schema=table_schema(dim),
        )


def table_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("path", pa.string(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dim)),
        ]
    )


# --------------------------------------------------------------------------------------------------
# Exact search
# --------------------------------------------------------------------------------------------------


def exact_top_k(data: np.ndarray, queries: np.ndarray, k: int, block: int = 131072) -> np.ndarray:
    """Indices of the ``k`` rows with the highest cosine to each query (unit vectors), best first."""
    best_sim = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_idx = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(data), block):
        sims = queries @ data[start : start + block].T
        kk = min(k, sims.shape[1])
        part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        cand_sim = np.concatenate([best_sim, np.take_along_axis(sims, part, axis=1)], axis=1)
        cand_idx = np.concatenate([best_idx, part + start], axis=1)
        order = np.argsort(-cand_sim, axis=1, kind="stable")[:, :k]
        best_sim = np.take_along_axis(cand_sim, order, axis=1)
        best_idx = np.take_along_axis(cand_idx, order, axis=1)
    return best_idx


def recall(found: Sequence[np.ndarray], truth: np.ndarray, k: int) -> float:
    hits = sum(len(set(f[:k].tolist()) & set(t[:k].tolist())) for f, t in zip(found, truth, strict=True))
    return hits / (k * len(truth))


# --------------------------------------------------------------------------------------------------
# Queries
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    nprobes: int | None  # None: flat scan (bypass_vector_index)
    refine: int  # 0: no refine_factor call
    limit: int

    def label(self) -> str:
        if self.nprobes is None:
            return f"flat (exact), limit {self.limit}"
        refine = "none" if self.refine == 0 else str(self.refine)
        return f"nprobes {self.nprobes:>4}, refine {refine:>4}, limit {self.limit}"


def query_fn(table: Any, setting: Setting) -> Callable[[np.ndarray], np.ndarray]:
    def run(vector: np.ndarray) -> np.ndarray:
        query = table.search(vector, vector_column_name="vector").distance_type("cosine")
        if setting.nprobes is None:
            query = query.bypass_vector_index()
        else:
            query = query.nprobes(setting.nprobes)
            if setting.refine:
                query = query.refine_factor(setting.refine)
        result = query.select(["id", "path", "_distance"]).limit(setting.limit).to_arrow()
        return result.column("id").to_numpy()

    return run


@dataclass
class Timing:
    label: str
    nprobes: int | None
    refine: int
    limit: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    recall: float
    queries: int
    current: bool = False


def time_settings(
    table: Any,
    settings: Sequence[Setting],
    queries: np.ndarray,
    truth: np.ndarray,
    k: int,
    warmup: int,
    current: Setting | None,
) -> tuple[list[Timing], Load]:
    """Time every setting on every query, round-robin per query, after ``warmup`` queries each."""
    fns = [query_fn(table, s) for s in settings]
    for fn in fns:
        for vector in queries[:warmup]:
            fn(vector)
    times: list[list[float]] = [[] for _ in settings]
    found: list[list[np.ndarray]] = [[] for _ in settings]
    with Load() as load:
        for vector in queries:
            for i, fn in enumerate(fns):
                t0 = time.perf_counter()
                ids = fn(vector)
                times[i].append((time.perf_counter() - t0) * 1000.0)
                found[i].append(ids)
    out = []
    for s, ms, ids in zip(settings, times, found, strict=True):
        out.append(
            Timing(
                label=s.label(),
                nprobes=s.nprobes,
                refine=s.refine,
                limit=s.limit,
                p50_ms=float(np.percentile(ms, 50)),
                p99_ms=float(np.percentile(ms, 99)),
                mean_ms=float(np.mean(ms)),
                recall=recall(ids, truth, k),
                queries=len(ms),
                current=s == current,
            )
        )
    return out, load


# --------------------------------------------------------------------------------------------------
# One kind of data
# --------------------------------------------------------------------------------------------------


def run_dataset(args: argparse.Namespace, kind: str, work_dir: Path) -> dict[str, Any]:
    t_start = time.perf_counter()
    rows, dim, k = args.rows, args.dim, args.k
    res: dict[str, Any] = {"data": kind, "rows": rows, "dim": dim, "k": k, "queries": args.queries}
    if kind == "clustered":
        res["centres"], res["spread"] = args.centres, args.spread
    print(
        f"\n==== {kind} data: {rows:,} x {dim}-d"
        + (f", {args.centres} centres, spread {args.spread}" if kind == "clustered" else "")
    )

    with Load() as load:
        everything = make_vectors(kind, rows + args.queries, dim, args.seed, args.centres, args.spread)
    data, queries = everything[:rows], everything[rows:]
    print(f"generate vectors: {load.describe()}")

    db = lancedb.connect(str(work_dir / kind))
    reader = pa.RecordBatchReader.from_batches(table_schema(dim), record_batches(data, args.batch_rows))
    with Load() as load:
        table = db.create_table("images", data=reader, mode="overwrite")
    table_dir = work_dir / kind / "images.lance"
    res["write_s"] = load.seconds
    res["table_mib"] = du_mib(table_dir)
    print(
        f"write table ({args.batch_rows:,}-row batches): {load.describe()}; {res['table_mib']:.0f} MiB on disk"
    )

    gc.collect()
    options = ann_index_options(rows, dim)
    if args.partitions:
        options["num_partitions"] = args.partitions
    if args.sub_vectors:
        options["num_sub_vectors"] = args.sub_vectors
    res["index_options"] = {key: v for key, v in options.items() if key != "replace"}
    res["max_rss_before_build_mib"] = max_rss_mib()
    res["rss_before_build_mib"] = rss_mib()
    can_reset = reset_peak_rss()
    print(f"create_index({', '.join(f'{key}={v!r}' for key, v in options.items())})")
    with Load() as load:
        create_ann_index(table, options)
    res["build_s"] = load.seconds
    res["build_own_cores"], res["build_other_cores"] = load.own_cores, load.other_cores
    res["peak_rss_build_mib"] = max_rss_mib() if can_reset else None
    res["rss_after_build_mib"] = rss_mib()
    res["index_mib"] = du_mib(table_dir / "_indices")
    peak = res["peak_rss_build_mib"]
    print(f"build index: {load.describe()}")
    print(
        f"RSS: {res['rss_before_build_mib']:.0f} MiB before the build (ru_maxrss so far "
        f"{res['max_rss_before_build_mib']:.0f} MiB), "
        + (
            f"peak during the build {peak:.0f} MiB (+{peak - res['rss_before_build_mib']:.0f} MiB), "
            if peak
            else ""
        )
        + f"{res['rss_after_build_mib']:.0f} MiB after; index {res['index_mib']:.1f} MiB on disk"
    )

    with Load() as load:
        truth = exact_top_k(data, queries, k)
    res["numpy_batch_ms_per_query"] = load.seconds * 1000 / len(queries)
    print(f"exact top-{k}, numpy, {len(queries)} queries in blocks: {load.describe()}")
    nq_flat = min(args.flat_queries, len(queries))
    single = []
    for vector in queries[:nq_flat]:
        t0 = time.perf_counter()
        sims = data @ vector
        np.argpartition(-sims, k - 1)[:k]
        single.append((time.perf_counter() - t0) * 1000)
    res["numpy_single_p50_ms"] = float(np.percentile(single, 50))
    res["cos_nn1"] = float(np.einsum("ij,ij->i", queries, data[truth[:, 0]]).mean())
    res["cos_nn_k"] = float(np.einsum("ij,ij->i", queries, data[truth[:, -1]]).mean())
    res["cos_random"] = float(
        np.einsum("ij,ij->i", queries, data[np.arange(len(queries)) * 7919 % rows]).mean()
    )
    print(
        f"data: mean cosine of a query to its 1st neighbour {res['cos_nn1']:.3f}, to its {k}th "
        f"{res['cos_nn_k']:.3f}, to a random row {res['cos_random']:.3f}"
    )

    flat, load = time_settings(table, [Setting(None, 0, k)], queries[:nq_flat], truth[:nq_flat], k, 2, None)
    res["flat"] = asdict(flat[0])
    print(
        f"LanceDB flat search: p50 {flat[0].p50_ms:.1f} ms, p99 {flat[0].p99_ms:.1f} ms over {nq_flat} queries, "
        f"recall@{k} vs numpy {flat[0].recall:.3f}; numpy one query at a time p50 {res['numpy_single_p50_ms']:.1f} ms "
        f"({load.describe()})"
    )

    current = Setting(ANN_NPROBES, ANN_REFINE, k)
    settings = [Setting(n, r, k) for n in args.nprobes for r in args.refine]
    if current not in settings:
        settings.append(current)
    fetch = 2 * k + 4
    settings.append(Setting(ANN_NPROBES, ANN_REFINE, fetch))
    timings, load = time_settings(table, settings, queries, truth, k, args.warmup, current)
    res["sweep"] = [asdict(t) for t in timings]
    res["sweep_own_cores"], res["sweep_other_cores"] = load.own_cores, load.other_cores
    print(
        f"\nANN sweep: {len(queries)} queries x {len(settings)} settings, {args.warmup} warm-up queries each; {load.describe()}"
    )
    print(
        f"(* = ANN_NPROBES {ANN_NPROBES}, ANN_REFINE {ANN_REFINE}; recall@{k} of the first {k} rows returned)"
    )
    print(sweep_table(timings, k))
    res["total_s"] = time.perf_counter() - t_start
    return res


def sweep_table(timings: Sequence[Timing], k: int) -> str:
    lines = [
        f"|   | setting | p50 ms | p99 ms | mean ms | recall@{k} | target met |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for t in timings:
        met = "yes" if t.p50_ms <= TARGET_P50_MS and t.recall >= TARGET_RECALL else "no"
        lines.append(
            f"| {'*' if t.current else ' '} | {t.label} | {t.p50_ms:.2f} | {t.p99_ms:.2f} | {t.mean_ms:.2f} | {t.recall:.3f} | {met} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------------


def summary(results: Sequence[dict[str, Any]], args: argparse.Namespace, wall_s: float) -> None:
    print("\n==== summary")
    print(
        f"machine: {os.cpu_count()} CPU cores, {platform.platform()}, {platform.processor() or platform.machine()}; "
        f"python {platform.python_version()}, lancedb {lancedb.__version__}, "
        f"numpy {np.__version__}, pyarrow {pa.__version__}"
    )
    print(
        f"vlmkit.index.store: ANN_NPROBES {ANN_NPROBES}, ANN_REFINE {ANN_REFINE}, ANN_MIN_ROWS {ANN_MIN_ROWS:,}; "
        f"target p50 <= {TARGET_P50_MS:g} ms at recall@{args.k} >= {TARGET_RECALL}"
    )
    for r in results:
        print(f"index options ({r['data']}): {r['index_options']}")
    names = [r["data"] for r in results]
    lines = [f"| figure | {' | '.join(names)} |", "| --- |" + " ---: |" * len(names)]

    def row(name: str, fmt: Callable[[dict[str, Any]], str]) -> None:
        lines.append(f"| {name} | {' | '.join(fmt(r) for r in results)} |")

    def cur(r: dict[str, Any]) -> dict[str, Any]:
        return next(t for t in r["sweep"] if t["current"])

    def best(r: dict[str, Any]) -> str:
        ok = [
            t
            for t in r["sweep"]
            if t["limit"] == r["k"] and t["p50_ms"] <= TARGET_P50_MS and t["recall"] >= TARGET_RECALL
        ]
        if not ok:
            return "none"
        t = min(ok, key=lambda t: t["p50_ms"])
        return f"nprobes {t['nprobes']}, refine {t['refine']} ({t['p50_ms']:.1f} ms, {t['recall']:.3f})"

    row("rows x dim", lambda r: f"{r['rows']:,} x {r['dim']}")
    row("write table (s)", lambda r: f"{r['write_s']:.1f}")
    row("table on disk (MiB)", lambda r: f"{r['table_mib']:.0f}")
    row("index build (s)", lambda r: f"{r['build_s']:.1f}")
    row(
        "  cores busy during build: own / others",
        lambda r: f"{r['build_own_cores']:.2f} / {_fmt(r['build_other_cores'])}",
    )
    row("index on disk (MiB)", lambda r: f"{r['index_mib']:.1f}")
    row("RSS before build (MiB)", lambda r: f"{r['rss_before_build_mib']:.0f}")
    row("peak RSS during build (MiB)", lambda r: _fmt(r["peak_rss_build_mib"], "{:.0f}"))
    row(
        "RSS increase during build (MiB)",
        lambda r: (
            "?"
            if r["peak_rss_build_mib"] is None
            else f"{r['peak_rss_build_mib'] - r['rss_before_build_mib']:.0f}"
        ),
    )
    row("ru_maxrss before build (MiB)", lambda r: f"{r['max_rss_before_build_mib']:.0f}")
    row(
        "cosine to 1st / kth NN / random row",
        lambda r: f"{r['cos_nn1']:.3f} / {r['cos_nn_k']:.3f} / {r['cos_random']:.3f}",
    )
    row("exact numpy, batched (ms/query)", lambda r: f"{r['numpy_batch_ms_per_query']:.1f}")
    row("exact numpy, one query p50 (ms)", lambda r: f"{r['numpy_single_p50_ms']:.1f}")
    row("exact LanceDB flat p50 (ms)", lambda r: f"{r['flat']['p50_ms']:.1f}")
    row(f"ANN p50 (ms), nprobes {ANN_NPROBES} refine {ANN_REFINE}", lambda r: f"{cur(r)['p50_ms']:.2f}")
    row(f"ANN p99 (ms), nprobes {ANN_NPROBES} refine {ANN_REFINE}", lambda r: f"{cur(r)['p99_ms']:.2f}")
    row(
        f"ANN recall@{args.k}, nprobes {ANN_NPROBES} refine {ANN_REFINE}", lambda r: f"{cur(r)['recall']:.3f}"
    )
    row(
        "target met with ANN_NPROBES, ANN_REFINE",
        lambda r: "yes" if cur(r)["p50_ms"] <= TARGET_P50_MS and cur(r)["recall"] >= TARGET_RECALL else "no",
    )
    row("fastest sweep setting meeting target", best)
    row(
        "  cores busy during sweep: own / others",
        lambda r: f"{r['sweep_own_cores']:.2f} / {_fmt(r['sweep_other_cores'])}",
    )
    row("run time for this data (s)", lambda r: f"{r['total_s']:.0f}")
    print("\n".join(lines))
    others = [v for r in results for v in (r["build_other_cores"], r["sweep_other_cores"]) if v is not None]
    if others and max(others) > 0.25:
        print(
            f"\nWARNING: other processes kept up to {max(others):.2f} of {os.cpu_count()} cores busy during the build "
            "or the queries; the times above are slowed and noisy."
        )
    print(f"\ntotal wall time {wall_s:.0f} s")


def _fmt(value: float | None, fmt: str = "{:.2f}") -> str:
    return "?" if value is None else fmt.format(value)


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the table (default 1,000,000)")
    parser.add_argument("--dim", type=int, default=512, help="vector size (default 512)")
    parser.add_argument("--queries", type=int, default=200, help="held-out query vectors (default 200)")
    parser.add_argument("--k", type=int, default=10, help="neighbours per query, recall@k (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the vectors (default 0)")
    parser.add_argument(
        "--data", choices=["uniform", "clustered", "both"], default="both", help="kind of data (default both)"
    )
    parser.add_argument("--centres", type=int, default=4096, help="clustered: mixture centres (default 4096)")
    parser.add_argument(
        "--spread",
        type=float,
        default=0.75,
        help="clustered: noise norm relative to the centre's (default 0.75)",
    )
    parser.add_argument(
        "--nprobes", type=int_list, default=[16, 32, 64, 128, 256], help="sweep, comma-separated"
    )
    parser.add_argument(
        "--refine", type=int_list, default=[1, 5, 10, 20], help="sweep, comma-separated; 0: none"
    )
    parser.add_argument("--warmup", type=int, default=5, help="warm-up queries per setting (default 5)")
    parser.add_argument(
        "--flat-queries", type=int, default=20, help="queries for the exact-search timings (default 20)"
    )
    parser.add_argument(
        "--batch-rows", type=int, default=100_000, help="rows per written batch (default 100,000)"
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=0,
        help="override ann_index_options' num_partitions (for tuning; 0: keep)",
    )
    parser.add_argument(
        "--sub-vectors",
        type=int,
        default=0,
        help="override ann_index_options' num_sub_vectors (for tuning; 0: keep)",
    )
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="keep the tables here (default: temp dir, removed)"
    )
    # Internal: with --data both, each kind of data runs in a child process that writes its figures here.
    parser.add_argument("--result-json", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if (
        min(args.rows, args.dim, args.queries, args.k, args.batch_rows, args.centres) < 1
        or args.k > args.rows
    ):
        parser.error("--rows, --dim, --queries, --k, --batch-rows and --centres must be >= 1, and k <= rows")
    if not args.nprobes or not args.refine or min(args.nprobes) < 1 or min(args.refine) < 0:
        parser.error("--nprobes needs values >= 1 and --refine values >= 0")
    if args.partitions < 0 or args.sub_vectors < 0 or (args.sub_vectors and args.dim % args.sub_vectors):
        parser.error("--partitions and --sub-vectors must be >= 0, and --sub-vectors must divide --dim")
    return args


def child_argv(args: argparse.Namespace, kind: str, out_dir: Path, result: Path) -> list[str]:
    return [
        sys.executable, str(Path(__file__).resolve()),
        "--rows", str(args.rows), "--dim", str(args.dim), "--queries", str(args.queries), "--k", str(args.k),
        "--seed", str(args.seed), "--data", kind, "--centres", str(args.centres), "--spread", str(args.spread),
        "--nprobes", ",".join(map(str, args.nprobes)), "--refine", ",".join(map(str, args.refine)),
        "--warmup", str(args.warmup), "--flat-queries", str(args.flat_queries), "--batch-rows", str(args.batch_rows),
        "--partitions", str(args.partitions), "--sub-vectors", str(args.sub_vectors),
        "--out-dir", str(out_dir), "--result-json", str(result),
    ]  # fmt: skip


def run(args: argparse.Namespace, work_dir: Path) -> None:
    start = time.perf_counter()
    if args.result_json is None:
        print(
            f"index_ann: {args.rows:,} x {args.dim}-d, {args.queries} queries, k={args.k}, seed {args.seed}; "
            f"{os.cpu_count()} CPU cores, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
        )
    if args.data != "both":
        results = [run_dataset(args, args.data, work_dir)]
        if args.result_json is not None:
            args.result_json.write_text(json.dumps(results[0]))
            return
    else:
        results = []
        for kind in ("uniform", "clustered"):
            out = work_dir / f"{kind}.json"
            sys.stdout.flush()
            subprocess.run(child_argv(args, kind, work_dir, out), check=True)
            results.append(json.loads(out.read_text()))
            out.unlink()
    summary(results, args, time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        run(args, args.out_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="vlmkit-ann-bench-") as tmp:
            run(args, Path(tmp))


if __name__ == "__main__":
    main()
