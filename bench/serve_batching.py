"""Dynamic batching in the API server: throughput with it and without it, over real HTTP.

What is measured
----------------
The API (``vlmkit_server.api.create_api_app``) runs under uvicorn in a separate process
(``bench/_serving.py``'s ``ServerProcess``: spawned, so clients and server do not share a GIL),
with the same loaded models behind one app per server configuration, each on its own loopback port:

``one-at-a-time``
    ``ServerConfig(max_batch=1, window_ms=0)``: every request is its own model call.
``batched W ms``
    ``ServerConfig(window_ms=W)`` with the default ``max_batch=16`` (``--windows``, default 5 and
    20; 5 ms is the server's default window).
``batched 5 ms, max 4``
    BLIP with ``--blip-max4`` only: ``ServerConfig(max_batch=4)``, its best batch size alone here.

``--clients`` (16) clients in this process, asyncio tasks on one ``httpx.AsyncClient`` with one
keep-alive connection each, send one request after another (a closed loop: each sends its next
request when its answer has come). One input per request, cycling through 16 different ones:

``text/default``      ``POST /v1/embeddings``, one sentence, the built-in ``vlmkit.load("default")``
                      (its MiniLM text encoder);
``image/default``     ``POST /v1/embeddings``, one JPEG as a ``data:`` URL, the built-in
                      (EfficientNet-Lite0 + ConSE);
``image/clip``        the same with a CLIP ViT-B/32-architecture checkpoint (``CLIPConfig()``
                      default sizes, random weights, built offline by ``bench/_fixtures.py``'s
                      ``build_clip_checkpoint``);
``caption/default``   ``POST /v1/caption``, one JPEG, the built-in (tags from its classifier);
``caption/blip``      ``POST /v1/caption`` with ``max_tokens`` ``--blip-tokens`` (20), a
                      ``BlipForConditionalGeneration`` with the size of
                      Salesforce/blip-image-captioning-base (``BlipConfig()`` defaults: ViT-B/16 at
                      384 px, 12-layer BERT-base decoder with cross-attention; 224 M parameters) and
                      random weights, saved with ``save_pretrained`` next to a ``BlipProcessor``
                      (384 px, CLIP mean/std) and the BERT WordPiece tokenizer with ``[DEC]``/``[ENC]``
                      that ``vlmkit.testing`` builds offline (``bench/_fixtures.py``'s
                      ``build_blip_caption``). Random weights never emit the end token, so every
                      caption is ``--blip-tokens`` tokens long;
``text/null`` and ``image/null``   the same requests to a stand-in model that answers at once
                      (``_serving.NullModel``): what HTTP, JSON, image decoding and the batcher
                      cost with no model.

JPEGs are cut from scikit-image's sample photos, longest side ``--image-side`` (640 px, quality
90, ~60 KB); embeddings are asked for base64-encoded, as the official OpenAI Python client does.

Each timed pass lasts ``--duration`` seconds, counted from the moment every client has had one
answer (connections open, batchers created, queue in its steady state), and counts the answers
that arrive inside it: requests/s, median (p50) and 99th-percentile (p99) latency, the mean items
per model call (the server's ``/metrics``), and the CPU cores the server process, the client
process and all other processes kept busy (``/proc``). Every model in the server is wrapped in
``_serving.TimedModel``, which adds up the wall time of its calls: the model's time per item
*inside* the server, and the share of the pass it was computing ("busy"; the rest it waited for
requests or for the window). A BLIP request takes seconds, so ``caption/blip`` runs bursts instead,
one-at-a-time and with the smallest window only: each client sends one request (16 at once), and
the pass is the whole burst.

Per workload every configuration gets one warm-up pass, then ``--repeats`` passes interleaved
across configurations (one-at-a-time, batched 5, batched 20, one-at-a-time, ...), so slow drifts
of a shared machine hit all alike; medians are reported and the ratio batched / one-at-a-time is
taken of the median requests/s (the issue's target: >= 3x).

Where the time goes: each model is timed alone, with no HTTP, on the same inputs (decoded as the
server decodes them) through the call the server's batch function makes (``embed_texts`` /
``embed_images`` / ``caption`` with ``batch_size`` = the batch): 16 calls of one item against one
call of 16 (BLIP: 4 calls of one, then one of 4 and one of 16), median of ``--repeats``
interleaved passes, twice:

* on the main thread of a fresh process that loads only that model (``_serving.model_alone_fresh``):
  the best case;
* in the server process, before the HTTP passes, on a worker thread (a bench-only route), as the
  server's batcher threads run it: the same process, allocator state and threads as the serving.

The two differ. torch's OpenMP (libgomp) gives every thread that runs a parallel op its own team;
once the main thread has one (the models were loaded and warmed there) and another thread starts
its own, libgomp manages more threads than there are cores and stops spinning between parallel
regions, so a batch-1 forward full of small ops waits on wake-ups: on 2 cores EfficientNet-Lite0
takes ~27 ms on a worker thread instead of ~16 on the main thread. The ratio b1 / b16 is the most batching can give
if requests cost nothing else; the null-model passes give what requests do cost, and the model's
own time per item while serving shows how much slower it runs with the event loop and the
clients beside it. (The allocator matters too: glibc returns big activation buffers to the OS
after each call unless its mmap threshold has grown, and the page faults of fresh buffers can
double a batch-16 forward of a small CNN; ``--server-env MALLOC_MMAP_THRESHOLD_=134217728
--server-env MALLOC_TRIM_THRESHOLD_=1073741824`` sets both for the server and the fresh
processes.)

A request image's decode (base64, ``vlmkit.images.load_image``, the 1024 px thumbnail, as the
server's ``_Images`` does it on the event loop) is timed alone too. Last, a bounded load test:
``--load-clients`` (32) clients for ``--load-seconds`` (20) on ``text/default`` against the
default ``ServerConfig()``, with non-200 answers counted (429 "queue full" apart).

How to run
----------
::

    python bench/serve_batching.py                    # everything, ~7 minutes on an idle 2-core CPU
    python bench/serve_batching.py --quick            # no BLIP, 1 pass of 2 s each, 5 s load test (~2 min)
    python bench/serve_batching.py --workloads text/default,image/clip --windows 5,10,20
    python bench/serve_batching.py --wait-idle 30     # on a shared machine
    python bench/serve_batching.py --server-env MALLOC_MMAP_THRESHOLD_=134217728 --server-env MALLOC_TRIM_THRESHOLD_=1073741824

Every pass reports the CPU that other processes used; the script warns when they kept more than a
quarter of a core busy, and ``--wait-idle SECONDS`` waits (up to SECONDS) for the machine to go
idle before each timed pass.
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the server process (spawned) inherits it
import _serving as serving  # noqa: E402 - bench/ is not a package
from _fixtures import build_blip_caption, build_clip_checkpoint  # noqa: E402
from _measure import per_item_ms, print_machine, wait_until_idle  # noqa: E402

import vlmkit  # noqa: E402

TARGET = 3.0  # the issue: batched serving >= 3x one-at-a-time
BUSY_CORES = 0.25  # other processes above this many cores during a pass: warn
ONE = "one-at-a-time"
BLIP_SMALL = "batched 5 ms, max 4"


@dataclass(frozen=True)
class Workload:
    key: str  # "kind/model"
    kind: str  # text | image | caption
    model: str  # the served model's name
    what: str
    burst: bool = False  # one request per client, the whole burst timed (slow models)

    @property
    def label(self) -> str:
        return f"{self.key} ({self.what})"


WORKLOADS = {
    w.key: w
    for w in (
        Workload("text/default", "text", "default", "POST /v1/embeddings, one text, built-in MiniLM"),
        Workload(
            "image/default",
            "image",
            "default",
            "POST /v1/embeddings, one image, built-in EfficientNet-Lite0 + ConSE",
        ),
        Workload("image/clip", "image", "clip", "POST /v1/embeddings, one image, CLIP ViT-B/32 architecture"),
        Workload("caption/default", "caption", "default", "POST /v1/caption, built-in tags"),
        Workload("text/null", "text", "null", "POST /v1/embeddings, one text, no model"),
        Workload("image/null", "image", "null", "POST /v1/embeddings, one image, no model"),
        Workload("caption/blip", "caption", "blip", "POST /v1/caption, BLIP-base architecture", burst=True),
    )
}
MODEL_ALONE = {"text/default", "image/default", "image/clip", "caption/default", "caption/blip"}


# --------------------------------------------------------------------------------------------------
# The model alone, at batch 1 and batch 16, in the server process
# --------------------------------------------------------------------------------------------------


@dataclass
class Alone:
    ms: dict[int, float]  # batch size -> wall ms per item (median pass)
    cores: dict[int, float]  # batch size -> CPU cores the server process kept busy
    other: float | None  # most cores other processes used during any pass

    @property
    def best(self) -> int:
        return min(self.ms, key=self.ms.__getitem__)

    @property
    def ceiling(self) -> float:
        """Per-item time at batch 1 over the best batched one: what batching can give at most."""
        return self.ms[1] / min(v for k, v in self.ms.items() if k > 1)


def model_alone(
    server: serving.ServerProcess,
    w: Workload,
    sizes: Sequence[int],
    repeats: int,
    single: int,
    args: argparse.Namespace,
    warm_each: bool = True,
) -> Alone:
    """Per-item time at each batch size, in the server process with no HTTP around the call:
    ``single`` one-item calls for size 1, one call of ``size`` items otherwise; a warm-up of each
    size (or of one item only, for slow models), then ``repeats`` interleaved passes."""
    url = next(iter(server.urls.values()))

    def run(size: int, items: int = single) -> serving.AlonePass:
        return serving.model_alone_pass(
            url,
            w.model,
            w.kind,
            size,
            single=items,
            max_tokens=args.blip_tokens,
            image_side=args.image_side,
            server_pid=server.pid,
        )

    for size in sizes if warm_each else (1,):
        run(size, single if warm_each else 1)
    passes: dict[int, list[serving.AlonePass]] = {s: [] for s in sizes}
    for _ in range(repeats):
        for size in sizes:
            waited = wait_until_idle(args.wait_idle)
            if waited > 2.5:
                print(f"  (waited {waited:.0f} s for other processes to go idle)")
            passes[size].append(run(size))
    return summarise(passes)


def summarise(passes: dict[int, list[serving.AlonePass]]) -> Alone:
    others = [p.other_cores for ps in passes.values() for p in ps if p.other_cores is not None]
    return Alone(
        {s: statistics.median(p.ms_per_item for p in ps) for s, ps in passes.items()},
        {s: statistics.median(p.server_cores for p in ps) for s, ps in passes.items()},
        max(others) if others else None,
    )


def alone_plan(w: Workload, args: argparse.Namespace) -> tuple[tuple[int, ...], int, int, bool]:
    """Batch sizes, repeats, one-item calls for size 1, and whether to warm up every size."""
    if w.burst:
        return (1, 4, 16), args.blip_repeats, 4, False
    return (1, 16), args.repeats, 16, True


def print_alone(key: str, result: Alone, seconds: float) -> None:
    sizes = "; ".join(
        f"batch {s}: {ms:8.2f} ms/item ({result.cores[s]:.2f} cores)" for s, ms in result.ms.items()
    )
    print(
        f"{key:<16} {sizes}; batch 1 / best = {result.ceiling:.2f}x "
        f"({seconds:.1f} s; other processes up to {fmt(result.other)} cores)"
    )


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def one_pass(
    url: str,
    w: Workload,
    path: str,
    payloads: Sequence[bytes],
    clients: int,
    duration: float | None,
    server_pid: int,
) -> serving.LoadResult:
    """A timed window of ``duration`` seconds, or (``None``) one request per client, the whole burst timed."""
    if duration is None:
        return serving.measure(
            url, path, payloads, model=w.model, clients=clients, per_client=1, server_pid=server_pid
        )
    return serving.measure(
        url, path, payloads, model=w.model, clients=clients, duration=duration, server_pid=server_pid
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--quick", action="store_true", help="no BLIP, 1 pass of 2 s per configuration, 5 s load test"
    )
    parser.add_argument(
        "--workloads", default=None, help=f"comma-separated subset of: {', '.join(WORKLOADS)} (default: all)"
    )
    parser.add_argument(
        "--windows", default="5,20", help="batching windows in ms, max_batch 16 (default 5,20)"
    )
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument(
        "--duration", type=float, default=None, help="seconds measured per pass (default 3; --quick 2)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed passes per configuration, median reported (default 3; --quick 1)",
    )
    parser.add_argument(
        "--blip-repeats", type=int, default=1, help="timed bursts per configuration for BLIP (default 1)"
    )
    parser.add_argument(
        "--blip-max4",
        action="store_true",
        help="BLIP also with ServerConfig(max_batch=4) (its best batch alone here; +30 s)",
    )
    parser.add_argument(
        "--blip-tokens", type=int, default=20, help="max_tokens of a BLIP caption request (default 20)"
    )
    parser.add_argument(
        "--image-side", type=int, default=640, help="longest side of the JPEGs sent (default 640)"
    )
    parser.add_argument("--load-clients", type=int, default=32, help="clients of the load test (default 32)")
    parser.add_argument(
        "--load-seconds",
        type=float,
        default=None,
        help="seconds of the load test (default 20; --quick 5; 0: skip)",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable for the server process only (repeatable), "
        "e.g. MALLOC_MMAP_THRESHOLD_=134217728",
    )
    parser.add_argument(
        "--out-dir", type=Path, default=None, help="keep the checkpoints here (default: temp dir)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the random weights")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each timed pass, wait up to SECONDS for other processes to go idle (default 0)",
    )
    args = parser.parse_args(argv)
    for name, full, quick in (("repeats", 3, 1), ("duration", 3.0, 2.0), ("load_seconds", 20.0, 5.0)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.quick:
        if args.workloads is None:
            args.workloads = ",".join(k for k in WORKLOADS if k != "caption/blip")
    keys = [k.strip() for k in (args.workloads or ",".join(WORKLOADS)).split(",") if k.strip()]
    if not keys or set(keys) - set(WORKLOADS):
        parser.error(f"--workloads takes a comma-separated subset of: {', '.join(WORKLOADS)}")
    args.workloads = [WORKLOADS[k] for k in keys]
    if any("=" not in item for item in args.server_env):
        parser.error("--server-env takes KEY=VALUE")
    args.server_env = dict(item.split("=", 1) for item in args.server_env)
    try:
        args.windows = sorted({float(w) for w in args.windows.split(",") if w.strip()})
    except ValueError:
        parser.error("--windows takes comma-separated milliseconds, e.g. 5,20")
    if not args.windows or min(args.windows) < 0:
        parser.error("--windows needs at least one window >= 0")
    if (
        min(args.clients, args.repeats, args.blip_repeats, args.blip_tokens, args.load_clients) < 1
        or args.duration <= 0
    ):
        parser.error(
            "--clients, --repeats, --blip-repeats, --blip-tokens, --load-clients must be >= 1, --duration > 0"
        )
    return args


def server_configs(windows: Sequence[float], blip: bool) -> dict[str, dict[str, Any]]:
    configs: dict[str, dict[str, Any]] = {ONE: {"max_batch": 1, "window_ms": 0.0}}
    for window in windows:
        configs[f"batched {window:g} ms"] = {"window_ms": window}  # max_batch 16, max_queue 64: the defaults
    if blip:
        configs[BLIP_SMALL] = {"max_batch": 4}
    configs["load test (defaults)"] = {}
    return configs


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "" if value is None else format(value, spec)


def med(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def run(args: argparse.Namespace, work_dir: Path) -> None:
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    t0 = time.perf_counter()
    print("== setup")
    import fastapi
    import httpx
    import uvicorn

    print(
        f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"fastapi {fastapi.__version__}, uvicorn {uvicorn.__version__}, httpx {httpx.__version__}, vlmkit {vlmkit.__version__}"
    )
    fast = [m for m in ("uvloop", "httptools") if __import__("importlib").util.find_spec(m) is not None]
    print(
        f"uvicorn event loop / HTTP parser: {'uvloop' if 'uvloop' in fast else 'asyncio'} / "
        f"{'httptools' if 'httptools' in fast else 'h11'}"
    )
    print_machine()
    print(
        f"torch threads (this process): {torch.get_num_threads()}; clients {args.clients}; pass {args.duration:g} s; "
        f"repeats {args.repeats} (BLIP {args.blip_repeats}); windows {', '.join(f'{w:g}' for w in args.windows)} ms"
    )

    keys = {w.key for w in args.workloads}
    wanted = {w.model for w in args.workloads}
    specs: dict[str, str] = {}
    if "default" in wanted:
        specs["default"] = "default"
    if "clip" in wanted:
        start = time.perf_counter()
        specs["clip"] = str(build_clip_checkpoint(work_dir / "clip-vit-b32-random", args.seed))
        print(
            f"built CLIP ViT-B/32 architecture, random weights, in {time.perf_counter() - start:.1f} s: {specs['clip']}"
        )
    if "blip" in wanted:
        start = time.perf_counter()
        specs["blip"] = str(build_blip_caption(work_dir / "blip-caption-base-random", args.seed))
        print(
            f"built BLIP captioning (base size), random weights, in {time.perf_counter() - start:.1f} s: {specs['blip']}"
        )
    if "null" in wanted:
        specs["null"] = serving.NULL
    jpegs = serving.sample_jpegs(16, args.image_side)
    encoded = [base64.b64encode(j).decode() for j in jpegs]
    images = [serving.decode_like_the_server(e) for e in encoded]
    print(
        f"request images: {len(jpegs)} JPEGs, {statistics.fmean(im.width * im.height for im in images) / 1e6:.2f} MP, "
        f"{statistics.fmean(len(j) for j in jpegs) / 1024:.0f} KB mean; texts: {len(serving.TEXTS)} sentences of "
        f"{statistics.fmean(len(t.split()) for t in serving.TEXTS):.0f} words"
    )

    # -- the model alone, main thread of a fresh process ------------------------------------------
    print(
        "\n== the model alone, on the main thread of a fresh process that loads only it: per-item time at "
        "batch 1 (16 calls of one) vs 16 (one call)"
    )
    fresh: dict[str, Alone] = {}
    for w in args.workloads:
        if w.key not in MODEL_ALONE:
            continue
        start = time.perf_counter()
        wait_until_idle(args.wait_idle)
        sizes, repeats, single, warm_each = alone_plan(w, args)
        fresh[w.key] = summarise(
            serving.model_alone_fresh(
                specs[w.model],
                w.kind,
                sizes,
                repeats,
                single=single,
                max_tokens=args.blip_tokens,
                image_side=args.image_side,
                warm_each=warm_each,
                env=args.server_env,
            )
        )
        print_alone(w.key, fresh[w.key], time.perf_counter() - start)

    # -- the server -----------------------------------------------------------------------------
    configs = server_configs(args.windows, "caption/blip" in keys and args.blip_max4)
    batched = [name for name in configs if name.startswith("batched ") and name != BLIP_SMALL]
    print(
        f"\n== server: models {', '.join(specs)}; configurations: "
        + "; ".join(f"{name} {fields or 'ServerConfig()'}" for name, fields in configs.items())
    )
    results: dict[str, dict[str, list[serving.LoadResult]]] = {}
    with serving.ServerProcess(specs, configs, env=args.server_env) as server:
        print(
            f"server process {server.pid} started in {server.start_seconds:.1f} s (torch threads {server.torch_threads}"
            + (f"; environment {args.server_env}" if args.server_env else "")
            + ")"
        )
        # -- the model alone, in the server process ----------------------------------------------
        print(
            "\n== the model alone, in the server process on a worker thread (as the batcher runs it; "
            "no HTTP): per-item time"
        )
        alone: dict[str, Alone] = {}
        for w in args.workloads:
            if w.key not in MODEL_ALONE:
                continue
            start = time.perf_counter()
            sizes, repeats, single, warm_each = alone_plan(w, args)
            alone[w.key] = model_alone(server, w, sizes, repeats, single, args, warm_each)
            print_alone(w.key, alone[w.key], time.perf_counter() - start)
        if any(w.kind != "text" for w in args.workloads):
            decode_ms = statistics.median(
                per_item_ms(lambda: [serving.decode_like_the_server(e) for e in encoded], len(encoded))
                for _ in range(5)
            )
            print(
                "request image decode alone (base64 + load_image + thumbnail, one thread, this process): "
                f"{decode_ms:.2f} ms/image"
            )

        for w in args.workloads:
            names = (
                [ONE, *batched]
                if not w.burst
                else [ONE, batched[0], *([BLIP_SMALL] if args.blip_max4 else [])]
            )
            path, payloads = serving.bodies(w.kind, w.model, jpegs=jpegs, max_tokens=args.blip_tokens)
            repeats = args.blip_repeats if w.burst else args.repeats
            print(f"\n-- {w.label}")

            for name in names:
                start = time.perf_counter()
                warm = one_pass(
                    server.urls[name], w, path, payloads, 1 if w.burst else args.clients, None, server.pid
                )
                if warm.ok != warm.clients:
                    raise RuntimeError(
                        f"{w.key} {name}: warm-up answers {dict(warm.statuses)}, failed {warm.failures}"
                    )
                print(f"warm-up {name}: {time.perf_counter() - start:.1f} s")
            passes: dict[str, list[serving.LoadResult]] = {name: [] for name in names}
            for repeat in range(repeats):
                for name in names:
                    waited = wait_until_idle(args.wait_idle)
                    if waited > 2.5:
                        print(f"  (waited {waited:.0f} s for other processes to go idle)")
                    result = one_pass(
                        server.urls[name],
                        w,
                        path,
                        payloads,
                        args.clients,
                        None if w.burst else args.duration,
                        server.pid,
                    )
                    passes[name].append(result)
                    busy = (
                        " BUSY" if result.other_cores is not None and result.other_cores > BUSY_CORES else ""
                    )
                    print(f"repeat {repeat + 1} {name:<22} {result.describe()}{busy}")
            results[w.key] = passes

        load: serving.LoadResult | None = None
        if args.load_seconds > 0 and "default" in specs:
            print(
                f"\n== load test: {args.load_clients} clients for {args.load_seconds:g} s, text/default, ServerConfig() "
                "(window 5 ms, max_batch 16, max_queue 64)"
            )
            wait_until_idle(args.wait_idle)
            load = serving.load_test(
                server.urls["load test (defaults)"],
                "text",
                "default",
                args.load_clients,
                args.load_seconds,
                jpegs,
                server_pid=server.pid,
            )
            print(load.describe())
            print(
                f"answers by status: {dict(sorted(load.statuses.items()))}; failed connections {load.failures}"
            )

    # -- summary ----------------------------------------------------------------------------------
    print(
        f"\n== summary: {args.clients} clients, median of {args.repeats} interleaved {args.duration:g}-s passes "
        f"(caption/blip: {args.blip_repeats} burst(s) of one request per client)"
    )
    print(
        "| workload | server config | req/s | p50 ms | p99 ms | vs one-at-a-time | mean batch | server cores | "
        "server CPU ms/req | client CPU ms/req | other cores |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    rps: dict[tuple[str, str], float] = {}
    server_ms: dict[tuple[str, str], float | None] = {}
    for w in args.workloads:
        passes = results[w.key]
        base = statistics.median(r.rps for r in passes[ONE])
        for name, runs in passes.items():
            rate = statistics.median(r.rps for r in runs)
            rps[(w.key, name)] = rate
            server_ms[(w.key, name)] = med([r.cpu_ms_per_request(r.server_cores) for r in runs])
            ratio = rate / base
            mark = "" if name == ONE else f"{ratio:.2f}x"
            print(
                f"| {w.key} | {name} | {rate:.1f} | {med([r.percentile(50) for r in runs]):.1f} | "
                f"{med([r.percentile(99) for r in runs]):.1f} | {mark} | {fmt(med([r.mean_batch for r in runs]))} | "
                f"{fmt(med([r.server_cores for r in runs]))} | {fmt(server_ms[(w.key, name)], '.1f')} | "
                f"{fmt(med([r.cpu_ms_per_request(r.client_cores) for r in runs]), '.1f')} | "
                f"{fmt(med([r.other_cores for r in runs]))} |"
            )
    errors = [
        (w.key, n, r)
        for w in args.workloads
        for n, runs in results[w.key].items()
        for r in runs
        if r.rejected or r.errors or r.failures
    ]
    for key, name, r in errors:
        print(f"non-200 answers: {key} {name}: 429s {r.rejected}, other {r.errors}, failed {r.failures}")

    print(
        "\n== where the time goes, ms per item. Model alone (no HTTP): on the main thread of a fresh process, "
        "and in the server process on a worker thread as the batcher runs it; b1 / b16 (ratio = the most "
        "batching can give). Serving: ms per request, and the model's own time per item while serving "
        "(busy: share of the pass the model computed)."
    )
    print(
        "| workload | alone, fresh main thread | alone, server worker thread | one-at-a-time: ms/req, model | "
        "best batched: ms/req, model, busy, mean batch | best / one | >= 3x? |"
    )
    print("| --- | --- | --- | --- | --- | ---: | --- |")

    def pair(a: Alone | None) -> str:
        if a is None:
            return ""
        big = 16 if 16 in a.ms else max(a.ms)
        best = "" if a.best in (1, big) else f"; best b{a.best} {a.ms[a.best]:.1f}"
        return f"{a.ms[1]:.1f} / {a.ms[big]:.1f} ({a.ms[1] / a.ms[big]:.2f}x{best})"

    for w in args.workloads:
        names = [n for n in results[w.key] if n != ONE]
        best = max(names, key=lambda n: rps[(w.key, n)])
        one_runs, best_runs = results[w.key][ONE], results[w.key][best]
        ratio = rps[(w.key, best)] / rps[(w.key, ONE)]
        print(
            f"| {w.key} | {pair(fresh.get(w.key))} | {pair(alone.get(w.key))} | "
            f"{1000.0 / rps[(w.key, ONE)]:.1f}, {fmt(med([r.model_ms_per_item for r in one_runs]), '.1f')} | "
            f"{1000.0 / rps[(w.key, best)]:.1f}, {fmt(med([r.model_ms_per_item for r in best_runs]), '.1f')}, "
            f"{fmt(med([r.model_busy for r in best_runs]), '.0%')}, {fmt(med([r.mean_batch for r in best_runs]), '.1f')} "
            f"({best}) | {ratio:.2f}x | {'yes' if ratio >= TARGET else 'NO'} |"
        )
    for kind in ("text", "image"):
        key = f"{kind}/null"
        if key in results:
            best = max(results[key], key=lambda n: rps[(key, n)])
            print(
                f"{key}: the server with no model answers {rps[(key, best)]:.0f} req/s at best ({best}); "
                f"server CPU {fmt(server_ms[(key, best)], '.2f')} ms/request, one-at-a-time "
                f"{fmt(server_ms[(key, ONE)], '.2f')} ms/request"
            )
    if load is not None:
        print(
            f"\nload test, {args.load_clients} clients, {load.seconds:.1f} s, text/default, ServerConfig(): "
            f"{load.rps:.1f} req/s, p50 {load.percentile(50):.1f} ms, p99 {load.percentile(99):.1f} ms, "
            f"{load.ok} answered 200, 429s {load.rejected}, other errors {load.errors}, failed {load.failures}; "
            f"mean batch {fmt(load.mean_batch)}"
        )
    all_runs = [r for w in args.workloads for runs in results[w.key].values() for r in runs] + (
        [load] if load else []
    )
    others = [r.other_cores for r in all_runs if r.other_cores is not None]
    if others:
        print(
            f"other processes: median {statistics.median(others):.2f} cores over the timed passes, {max(others):.2f} at most"
        )
        if max(others) > BUSY_CORES:
            print(
                f"WARNING: other processes kept up to {max(others):.2f} of {os.cpu_count()} cores busy during timed "
                "passes; the figures are slowed and noisy. Re-run on an idle machine (see --wait-idle)."
            )
    print_machine()
    print(f"\ntotal run {time.perf_counter() - t0:.0f} s")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        run(args, args.out_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="vlmkit-serve-bench-") as tmp:
            run(args, Path(tmp))


if __name__ == "__main__":
    main()
