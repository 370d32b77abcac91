"""The serving benches' machinery: the API in a process of its own, closed-loop HTTP load, and the
model timed alone. ``bench/serve_load.py`` and ``bench/serve_batching.py`` run on it.

- :class:`ServerProcess`: ``vlmkit_server.api.create_api_app`` over some models (name ->
  ``vlmkit.load`` argument, or :data:`NULL`, a stand-in that answers at once) under uvicorn in a
  spawned process, one app per server configuration, each on its own loopback port. Each model is
  wrapped in :class:`TimedModel`, which adds up the time of its calls; bench-only routes report it
  and time the model's batch call alone in the server process (:func:`model_alone_pass`).
- :func:`model_alone_fresh`: the model's batch call timed on the main thread of a fresh process.
- :func:`bodies` and :func:`sample_jpegs`: the serialised requests of a workload.
- :func:`measure` and :func:`load_test`: one closed-loop pass of ``httpx`` clients, as a
  :class:`LoadResult` (requests/s, latencies, statuses, batch sizes, CPU use).

The listening socket is made with ``IPPROTO_TCP``: asyncio turns Nagle's algorithm off only on
sockets that say TCP, and without that every answer on a kept-alive connection waits ~40 ms for
the client's delayed ACK.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import multiprocessing
import os
import re
import socket
import threading
import time
import types
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from _measure import machine_busy_seconds, process_cpu_seconds  # bench/ is sys.path[0] when run

NULL = "null"  # model spec of the stand-in that answers at once

TEXTS = (
    "A photo of a cat sitting on a couch next to a window.",
    "Two dogs are playing with a red ball in the grass.",
    "A man is riding a bicycle down a busy street in the rain.",
    "There is a small wooden boat on the lake at sunset.",
    "A group of people standing next to a blue city bus.",
    "The woman holds a yellow umbrella while crossing the road.",
    "A plate with a slice of pizza and a glass of water.",
    "A long passenger train is coming into the station.",
    "An airplane flying over the city lights at night.",
    "A close up picture of a yellow flower with a bee.",
    "A brown horse running across a green field in summer.",
    "Children building a sandcastle on a sunny beach.",
    "A bowl of fresh fruit on a wooden kitchen table.",
    "A snowy mountain road with a car and pine trees.",
    "An old lighthouse on a rocky coast under grey clouds.",
    "A cup of coffee and a laptop on a desk by the window.",
)


# --------------------------------------------------------------------------------------------------
# The server, in its own process
# --------------------------------------------------------------------------------------------------


class NullModel:
    """Answers every embedding and caption request at once with a constant: what the server costs
    without a model (HTTP, JSON, image decoding, the batcher)."""

    def __init__(self, dim: int = 512) -> None:
        self.name = NULL
        self.kind = types.SimpleNamespace(label="null stand-in", tasks=frozenset({"embed", "caption"}))
        self._vector = np.full(dim, 1 / np.sqrt(dim), dtype=np.float32)

    def embed_texts(self, texts: Sequence[Any], *, batch_size: int = 64) -> np.ndarray:
        return np.tile(self._vector, (len(texts), 1))

    def embed_images(self, images: Sequence[Any], *, batch_size: int = 32) -> np.ndarray:
        return np.tile(self._vector, (len(images), 1))

    def caption(self, images: Sequence[Any], prompt: str | None = None, **_: Any) -> list[str]:
        return ["a photo of a thing"] * len(images)


class TimedModel:
    """Forwards everything to ``model`` and adds up the time of the calls the server's batch
    functions make: how long the model itself takes inside the server."""

    TIMED = frozenset({"embed_texts", "embed_images", "caption", "ask"})

    def __init__(self, model: Any) -> None:
        self._model = model
        self._lock = threading.Lock()
        self._calls, self._items, self._seconds = 0, 0, 0.0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._model, name)
        if name not in self.TIMED:
            return attr

        def timed(items: Sequence[Any], *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return attr(items, *args, **kwargs)
            finally:
                with self._lock:
                    self._calls += 1
                    self._items += len(items)
                    self._seconds += time.perf_counter() - start

        return timed

    def stats(self) -> dict[str, float]:
        with self._lock:
            return {"calls": self._calls, "items": self._items, "seconds": self._seconds}


def decode_like_the_server(payload: str) -> Any:
    """What the server's ``_Images`` hands the model for a base64 ``data:`` URL payload (default
    ``max_pixels``): ``load_image`` and the 1024 px thumbnail."""
    from vlmkit.images import load_image

    image = load_image(base64.b64decode(payload, validate=True), max_pixels=None)
    image.thumbnail((1024, 1024))
    return image


def model_call(model: Any, kind: str, max_tokens: int) -> Any:
    """The call the server's batch function makes for ``kind``, with ``batch_size`` = the batch."""
    if kind == "text":
        return lambda items: model.embed_texts(items, batch_size=len(items))
    if kind == "image":
        return lambda items: model.embed_images(items, batch_size=len(items))
    from vlmkit import GenerationOptions

    options = GenerationOptions(max_new_tokens=max_tokens)
    return lambda items: model.caption(items, prompt=None, options=options, batch_size=len(items))


class _Alone:
    """Server-process side of :func:`model_alone_pass`: the model's batch call, no HTTP around it."""

    def __init__(self, models: dict[str, TimedModel]) -> None:
        self.models = models
        self.images: dict[int, list[Any]] = {}

    def inputs(self, kind: str, image_side: int) -> list[Any]:
        if kind == "text":
            return list(TEXTS)
        if image_side not in self.images:
            self.images[image_side] = [
                decode_like_the_server(base64.b64encode(j).decode()) for j in sample_jpegs(16, image_side)
            ]
        return self.images[image_side]

    def run(self, body: dict[str, Any]) -> dict[str, float]:
        model = self.models[body["model"]]._model  # unwrapped: the server's counters stay as they are
        inputs = self.inputs(body["kind"], int(body["image_side"]))
        call = model_call(model, body["kind"], int(body["max_tokens"]))
        size, single = int(body["size"]), int(body["single"])
        cpu0, start = process_cpu_seconds(None), time.perf_counter()
        if size == 1:
            for i in range(single):
                call([inputs[i % len(inputs)]])
        else:
            call([inputs[i % len(inputs)] for i in range(size)])
        seconds = time.perf_counter() - start
        return {
            "seconds": seconds,
            "items": single if size == 1 else size,
            "cpu": (process_cpu_seconds(None) or 0.0) - (cpu0 or 0.0),
        }


@contextlib.contextmanager
def environment(env: dict[str, str] | None) -> Iterator[None]:
    """Extra environment variables for the processes started inside the block."""
    saved = {key: os.environ.get(key) for key in env or {}}
    os.environ.update(env or {})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _alone_main(
    spec: str, body: dict[str, Any], sizes: Sequence[int], repeats: int, warm_each: bool
) -> dict[int, list[AlonePass]]:
    """Child process of :func:`model_alone_fresh`: load the model and time it on the main thread."""
    import transformers

    import vlmkit

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    alone = _Alone({"m": TimedModel(NullModel() if spec == NULL else vlmkit.load(spec))})
    body = {**body, "model": "m"}
    for size in sizes if warm_each else (1,):
        alone.run({**body, "size": size, "single": body["single"] if warm_each else 1})
    passes: dict[int, list[AlonePass]] = {size: [] for size in sizes}
    for _ in range(repeats):
        for size in sizes:
            busy0 = machine_busy_seconds()
            out = alone.run({**body, "size": size})
            busy1 = machine_busy_seconds()
            other = (
                None
                if busy0 is None or busy1 is None
                else max(0.0, (busy1 - busy0 - out["cpu"]) / out["seconds"])
            )
            passes[size].append(
                AlonePass(out["seconds"], int(out["items"]), out["cpu"] / out["seconds"], other)
            )
    return passes


def model_alone_fresh(
    spec: str,
    kind: str,
    sizes: Sequence[int],
    repeats: int,
    *,
    single: int = 16,
    max_tokens: int = 20,
    image_side: int = 640,
    warm_each: bool = True,
    env: dict[str, str] | None = None,
) -> dict[int, list[AlonePass]]:
    """The model's batch call timed on the main thread of a fresh (spawned) process that loads only
    this model: the best case, with no other thread ever having run torch in the process. A warm-up
    of each size (or of one item), then ``repeats`` passes interleaved over ``sizes``."""
    from concurrent.futures import ProcessPoolExecutor

    body = {"kind": kind, "single": single, "max_tokens": max_tokens, "image_side": image_side}
    with environment(env), ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_alone_main, spec, body, list(sizes), repeats, warm_each).result()


def _serve(models: dict[str, str], configs: dict[str, dict[str, Any]], conn: Connection) -> None:
    """Child process: load the models once, one app per server configuration on its own loopback
    port (all under one event loop), report the ports, serve until told to stop."""
    import logging

    import transformers
    import uvicorn
    from fastapi import Request

    import vlmkit
    from vlmkit_server.api import ServerConfig, create_api_app

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    logging.getLogger("vlmkit.server").setLevel(logging.WARNING)
    try:
        timed = {
            name: TimedModel(NullModel() if spec == NULL else vlmkit.load(spec))
            for name, spec in models.items()
        }
        loaded: dict[str, Any] = dict(timed)
        alone = _Alone(timed)

        async def model_alone_route(request: Any) -> dict[str, float]:
            return await asyncio.to_thread(alone.run, await request.json())

        model_alone_route.__annotations__ = {"request": Request, "return": dict}  # resolved for FastAPI
        servers, sockets, ports = [], [], {}
        for config_name, fields in configs.items():
            app = create_api_app(loaded, ServerConfig(**fields))
            # Bench-only routes: the models' time inside the server, and the model alone in this process.
            app.add_api_route(
                "/bench/model-time", lambda: {name: m.stats() for name, m in timed.items()}, methods=["GET"]
            )
            app.add_api_route("/bench/model-alone", model_alone_route, methods=["POST"])
            # IPPROTO_TCP explicitly: asyncio disables Nagle only on sockets whose proto says TCP, and
            # accepted sockets inherit it; with proto 0 every answer on a kept-alive connection
            # waits ~40 ms for the client's delayed ACK. (uvicorn's own host/port binding is fine.)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            config = uvicorn.Config(
                app, log_level="warning", access_log=False, lifespan="on", timeout_keep_alive=60
            )
            servers.append(uvicorn.Server(config))
            sockets.append(sock)
            ports[config_name] = sock.getsockname()[1]
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        return

    def stop() -> None:
        try:
            conn.recv()
        except EOFError:  # the parent went away
            pass
        for server in servers:
            server.should_exit = True

    async def main() -> None:
        tasks = [
            asyncio.create_task(s.serve(sockets=[sock])) for s, sock in zip(servers, sockets, strict=True)
        ]
        while not all(s.started for s in servers):
            await asyncio.sleep(0.02)
        conn.send({"ports": ports, "threads": __import__("torch").get_num_threads()})
        await asyncio.gather(*tasks)

    threading.Thread(target=stop, daemon=True).start()
    asyncio.run(main())


class ServerProcess:
    """The API over ``models`` (name -> ``vlmkit.load`` argument, or ``NULL``) in a spawned process,
    one app per entry of ``configs`` (name -> ``ServerConfig`` fields), each on its own port. ``env``
    adds environment variables for the server process only (e.g. ``MALLOC_MMAP_THRESHOLD_``)."""

    def __init__(
        self,
        models: dict[str, str],
        configs: dict[str, dict[str, Any]],
        start_timeout: float = 300.0,
        env: dict[str, str] | None = None,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self.process = context.Process(
            target=_serve, args=(models, configs, child), name="vlmkit-bench-server", daemon=True
        )
        start = time.perf_counter()
        with environment(env):
            self.process.start()  # the spawned interpreter starts with this environment
        child.close()
        if not self._conn.poll(start_timeout):
            self.close()
            raise RuntimeError(f"the server did not start within {start_timeout:.0f} s")
        reply = self._conn.recv()
        if "error" in reply:
            self.close()
            raise RuntimeError(f"the server failed to start: {reply['error']}")
        self.urls = {name: f"http://127.0.0.1:{port}" for name, port in reply["ports"].items()}
        self.torch_threads = reply["threads"]
        self.start_seconds = time.perf_counter() - start
        import httpx

        for url in self.urls.values():
            httpx.get(url + "/health", timeout=30, trust_env=False).raise_for_status()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def close(self) -> None:
        try:
            self._conn.send("stop")
        except (BrokenPipeError, OSError):
            pass
        self.process.join(30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------


def data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()


def bodies(
    kind: str,
    model: str,
    *,
    texts: Sequence[str] = TEXTS,
    jpegs: Sequence[bytes] = (),
    encoding: str = "base64",
    max_tokens: int = 20,
) -> tuple[str, list[bytes]]:
    """The endpoint and the serialised request bodies of a workload, one input per request."""
    if kind == "text":
        return "/v1/embeddings", [
            json.dumps({"model": model, "input": t, "encoding_format": encoding}).encode() for t in texts
        ]
    if kind == "image":
        return "/v1/embeddings", [
            json.dumps(
                {
                    "model": model,
                    "input": {"type": "image_url", "image_url": {"url": data_url(j)}},
                    "encoding_format": encoding,
                }
            ).encode()
            for j in jpegs
        ]
    if kind == "caption":
        return "/v1/caption", [
            json.dumps({"model": model, "image": data_url(j), "max_tokens": max_tokens}).encode()
            for j in jpegs
        ]
    raise ValueError(f"unknown kind {kind!r}")


def sample_jpegs(count: int = 16, side: int = 640, quality: int = 90) -> list[bytes]:
    """``count`` JPEGs with the longest side ``side`` cut from scikit-image's sample photos."""
    from PIL import Image
    from skimage import data

    sources = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        array = sources[i % len(sources)]
        h, w = array.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        image = Image.fromarray(np.ascontiguousarray(array[top : top + ch, left : left + cw, :3]))
        scale = side / max(image.size)
        image = image.resize(
            (round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC
        )
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        out.append(buffer.getvalue())
    return out


# --------------------------------------------------------------------------------------------------
# CPU snapshots
# --------------------------------------------------------------------------------------------------


@dataclass
class _Snapshot:
    t: float
    machine: float | None
    client: float | None
    server: float | None

    @classmethod
    def take(cls, server_pid: int | None) -> _Snapshot:
        return cls(
            time.perf_counter(),
            machine_busy_seconds(),
            process_cpu_seconds(None),
            process_cpu_seconds(server_pid) if server_pid is not None else None,
        )


# --------------------------------------------------------------------------------------------------
# The closed loop
# --------------------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    clients: int
    seconds: float  # the measurement window
    latencies_ms: list[float]  # answers with status 200 inside the window
    statuses: Counter[int] = field(default_factory=Counter)  # every answer inside the window
    failures: int = 0  # requests that got no HTTP answer (connection errors, client timeouts)
    batch_items: float | None = None  # items and model calls over the whole pass (server /metrics)
    batches: float | None = None
    pass_seconds: float | None = None  # the whole pass: start, settling, window, the last answers
    model_seconds: float | None = None  # time inside the model's calls over the whole pass (bench servers)
    model_items: float | None = None
    server_cores: float | None = None
    client_cores: float | None = None
    other_cores: float | None = None

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    @property
    def rps(self) -> float:
        return self.ok / self.seconds

    @property
    def rejected(self) -> int:
        return self.statuses.get(429, 0)

    @property
    def errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s not in (200, 429))

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def mean_batch(self) -> float | None:
        return self.batch_items / self.batches if self.batches else None

    @property
    def model_ms_per_item(self) -> float | None:
        """Wall time of the model's calls inside the server, per item."""
        return (
            None
            if not self.model_items or self.model_seconds is None
            else self.model_seconds * 1000.0 / self.model_items
        )

    @property
    def model_busy(self) -> float | None:
        """Share of the pass the model was computing (the rest: waiting for requests or the window)."""
        return (
            None
            if self.model_seconds is None or not self.pass_seconds
            else self.model_seconds / self.pass_seconds
        )

    def cpu_ms_per_request(self, cores: float | None) -> float | None:
        return None if cores is None or not self.ok else cores * self.seconds * 1000.0 / self.ok

    def describe(self) -> str:
        parts = [
            f"{self.rps:8.2f} req/s",
            f"p50 {self.percentile(50):8.1f} ms",
            f"p99 {self.percentile(99):8.1f} ms",
            f"n={self.ok}",
        ]
        if self.rejected or self.errors or self.failures:
            parts.append(f"429s {self.rejected}, other errors {self.errors}, failed {self.failures}")
        if self.mean_batch is not None:
            parts.append(f"mean batch {self.mean_batch:5.2f}")
        if self.model_ms_per_item is not None and self.model_busy is not None:
            parts.append(f"model {self.model_ms_per_item:7.2f} ms/item, busy {self.model_busy:4.0%}")
        cores = [
            f"{name} {v:.2f}"
            for name, v in (
                ("server", self.server_cores),
                ("client", self.client_cores),
                ("other", self.other_cores),
            )
            if v is not None
        ]
        if cores:
            parts.append("cores: " + ", ".join(cores))
        return "; ".join(parts)


async def _closed_loop(
    url: str,
    path: str,
    payloads: Sequence[bytes],
    clients: int,
    *,
    duration: float | None,
    per_client: int | None,
    settle: float,
    timeout: float,
    server_pid: int | None,
) -> LoadResult:
    import httpx

    done: list[tuple[float, float, int]] = []  # (sent, answered, status)
    failures: list[float] = []
    answered_once = [False] * clients
    all_answered = asyncio.Event()
    stop = asyncio.Event()
    counter = iter(range(10**12))
    headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout, trust_env=False) as client:

        async def one_client(index: int) -> None:
            sent_count = 0
            while not stop.is_set() and (per_client is None or sent_count < per_client):
                body = payloads[next(counter) % len(payloads)]
                sent = time.perf_counter()
                sent_count += 1
                try:
                    reply = await client.post(path, content=body, headers=headers)
                    await reply.aread()
                except httpx.HTTPError:
                    failures.append(time.perf_counter())
                    continue
                done.append((sent, time.perf_counter(), reply.status_code))
                if not answered_once[index]:
                    answered_once[index] = True
                    if all(answered_once):
                        all_answered.set()

        start = _Snapshot.take(server_pid)
        tasks = [asyncio.create_task(one_client(i)) for i in range(clients)]
        if per_client is not None:  # a fixed number of requests: the window is the whole run
            await asyncio.gather(*tasks)
            first = start
            last = _Snapshot.take(server_pid)
        else:
            assert duration is not None
            try:
                await asyncio.wait_for(all_answered.wait(), settle)
            except TimeoutError:
                pass
            first = _Snapshot.take(server_pid)
            await asyncio.sleep(duration)
            last = _Snapshot.take(server_pid)
            stop.set()
            await asyncio.gather(*tasks)

    window = [(s, a, code) for s, a, code in done if first.t <= a <= last.t]
    result = LoadResult(
        clients=clients,
        seconds=last.t - first.t,
        latencies_ms=[(a - s) * 1000.0 for s, a, code in window if code == 200],
        statuses=Counter(code for _, _, code in window),
        failures=sum(1 for t in failures if first.t <= t <= last.t),
    )
    wall = last.t - first.t
    if first.client is not None and last.client is not None:
        result.client_cores = (last.client - first.client) / wall
    if first.server is not None and last.server is not None:
        result.server_cores = (last.server - first.server) / wall
    if first.machine is not None and last.machine is not None:
        result.other_cores = max(
            0.0,
            (last.machine - first.machine) / wall
            - (result.client_cores or 0.0)
            - (result.server_cores or 0.0),
        )
    return result


_BATCH_LINE = re.compile(r'^vlmkit_batch_size_(sum|count)\{model="([^"]*)",task="([^"]*)"\} ([0-9.eE+-]+)$')


def batch_totals(url: str, model: str) -> tuple[float, float] | None:
    """Items and model calls so far for ``model`` (all tasks), from the server's /metrics."""
    import httpx

    try:
        text = httpx.get(url + "/metrics", timeout=30, trust_env=False).text
    except httpx.HTTPError:
        return None
    sums = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        match = _BATCH_LINE.match(line)
        if match and match.group(2) == model:
            sums[match.group(1)] += float(match.group(4))
    return sums["sum"], sums["count"]


@dataclass
class AlonePass:
    seconds: float
    items: int
    server_cores: float  # cores the server process kept busy (the model's threads)
    other_cores: float | None  # every process but the server and this one

    @property
    def ms_per_item(self) -> float:
        return self.seconds * 1000.0 / self.items


def model_alone_pass(
    url: str,
    model: str,
    kind: str,
    size: int,
    *,
    single: int = 16,
    max_tokens: int = 20,
    image_side: int = 640,
    server_pid: int | None = None,
) -> AlonePass:
    """The model's batch call timed inside a :class:`ServerProcess`, with no HTTP around it: ``single``
    calls of one item for ``size`` 1, else one call of ``size`` items (inputs as :func:`bodies` sends)."""
    import httpx

    body = {
        "model": model,
        "kind": kind,
        "size": size,
        "single": single,
        "max_tokens": max_tokens,
        "image_side": image_side,
    }
    first = _Snapshot.take(server_pid)
    reply = httpx.post(url + "/bench/model-alone", json=body, timeout=3600, trust_env=False)
    last = _Snapshot.take(server_pid)
    reply.raise_for_status()
    data = reply.json()
    wall = last.t - first.t
    other = None
    if None not in (first.machine, last.machine, first.server, last.server, first.client, last.client):
        busy = (last.machine - first.machine) - (last.server - first.server) - (last.client - first.client)  # type: ignore[operator]
        other = max(0.0, busy / wall)
    return AlonePass(data["seconds"], int(data["items"]), data["cpu"] / data["seconds"], other)


def model_time(url: str, model: str) -> tuple[float, float] | None:
    """Seconds inside ``model``'s calls and items so far (servers started by :class:`ServerProcess`)."""
    import httpx

    try:
        reply = httpx.get(url + "/bench/model-time", timeout=30, trust_env=False)
    except httpx.HTTPError:
        return None
    if reply.status_code != 200 or model not in reply.json():
        return None
    stats = reply.json()[model]
    return stats["seconds"], stats["items"]


def measure(
    url: str,
    path: str,
    payloads: Sequence[bytes],
    *,
    model: str,
    clients: int,
    duration: float | None = None,
    per_client: int | None = None,
    settle: float = 30.0,
    timeout: float = 600.0,
    server_pid: int | None = None,
) -> LoadResult:
    """One closed-loop pass: for ``duration`` seconds once every client has had an answer (at most
    ``settle`` s after the start), or ``per_client`` requests per client with the whole run as the
    window. ``server_pid`` adds the server's CPU use."""
    if (duration is None) == (per_client is None):
        raise ValueError("give exactly one of duration and per_client")
    before, model_before = batch_totals(url, model), model_time(url, model)
    start = time.perf_counter()
    result = asyncio.run(
        _closed_loop(
            url,
            path,
            payloads,
            clients,
            duration=duration,
            per_client=per_client,
            settle=settle,
            timeout=timeout,
            server_pid=server_pid,
        )
    )
    result.pass_seconds = time.perf_counter() - start
    after, model_after = batch_totals(url, model), model_time(url, model)
    if before is not None and after is not None:
        result.batch_items, result.batches = after[0] - before[0], after[1] - before[1]
    if model_before is not None and model_after is not None:
        result.model_seconds, result.model_items = (
            model_after[0] - model_before[0],
            model_after[1] - model_before[1],
        )
    return result


def load_test(
    url: str,
    kind: str,
    model: str,
    clients: int,
    duration: float,
    jpegs: Sequence[bytes],
    encoding: str = "base64",
    server_pid: int | None = None,
) -> LoadResult:
    path, payloads = bodies(kind, model, jpegs=jpegs, encoding=encoding)
    return measure(
        url, path, payloads, model=model, clients=clients, duration=duration, server_pid=server_pid
    )
