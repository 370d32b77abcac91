"""``vlmkit serve --engine ray``: every served model a Ray Serve deployment with its own replicas.

The HTTP API stays the one of :mod:`vlmkit_server.api`, in the process that runs ``vlmkit serve``:
its routes, pages, limits, API keys, routing and metrics are the same code for both engines. What
changes is where the models run. Each model is a Ray Serve application of one deployment,
:class:`ModelReplica` (``N`` replicas, or an autoscaling range; a GPU each when the cluster has
them), and the server holds a :class:`RayModel` in its place: an object with the calls the server
makes into a model, each sent through a Serve deployment handle to the replica the Serve router
picks. Captions, answers and embeddings go one item per call and are batched inside each replica
(``serve.batch``, with the server's ``--max-batch`` and ``--batch-window-ms``); chat, streamed or
not, and the other tasks are one call each.

Faults: a replica that dies with requests on it fails those requests with
:class:`ReplicaUnavailable` (a 503 with ``Retry-After``); Serve starts a new replica and routes new
requests to the live ones. Errors a model raises (a bad image, a task it cannot do) come back as
the same exception, so the same 4xx follow.

Per-replica figures: every item reports the replica that served it and the size of the batch it
ran in (``vlmkit_replica_items``, ``vlmkit_replica_batch_size``), and ``/metrics`` reads each
deployment's replica states from Serve (``vlmkit_replicas``).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import pickle
import socket
import threading
import time
import types
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ray import serve

from vlmkit.errors import InputError, VlmkitError
from vlmkit.models.kinds import TASKS

from .errors import Unavailable
from .served import context_of, grouped

__all__ = ["RayEngine", "RayModel", "ReplicaUnavailable", "ModelReplica", "parse_replicas", "parse_autoscale", "replica_model"]

APP_PREFIX = "vlmkit-"
#: Calls one replica takes at once (Serve's ``max_ongoing_requests``): enough to fill a batch.
MAX_ONGOING = 32
#: Calls a :class:`RayModel` forwards at once, per replica it may have.
FORWARD_PER_REPLICA = 8
#: Tasks a replica runs on request by name (the batched ones have methods of their own).
CALLS = frozenset({"chat", "classify", "match", "prompt_tokens"})


class ReplicaUnavailable(Unavailable):
    """The replica serving a request died or could not be reached (a 503 with ``Retry-After``):
    retrying reaches a live one."""


@dataclass(frozen=True)
class Scale:
    """The replicas of one deployment: a fixed number, or an autoscaling range."""

    replicas: int = 1
    autoscale: tuple[int, int] | None = None
    tuning: tuple[tuple[str, float], ...] = ()  # more of Serve's autoscaling_config (delays, look-back)

    @property
    def most(self) -> int:
        return self.autoscale[1] if self.autoscale else self.replicas

    def describe(self) -> str:
        return f"{self.autoscale[0]}-{self.autoscale[1]} (autoscaled)" if self.autoscale else str(self.replicas)

    def options(self) -> dict[str, Any]:
        if self.autoscale is None:
            return {"num_replicas": self.replicas}
        low, high = self.autoscale
        return {"autoscaling_config": {"min_replicas": low, "max_replicas": high, "initial_replicas": max(low, 1),
                                       "target_ongoing_requests": 4, **dict(self.tuning)}}


def parse_replicas(specs: Sequence[str]) -> dict[str, int]:
    """``NAME=N`` strings -> {name: N}; N is at least 1."""
    out: dict[str, int] = {}
    for spec in specs:
        name, eq, count = spec.partition("=")
        if not eq or not name or not count.strip().isdigit():
            raise InputError(f"--replicas: expected NAME=N with N a whole number, got {spec!r}")
        if int(count) < 1:
            raise InputError(f"--replicas: {name} needs at least 1 replica, got {count}")
        out[name] = int(count)
    return out


def parse_autoscale(specs: Sequence[str]) -> dict[str, tuple[int, int]]:
    """``NAME=MIN:MAX`` strings -> {name: (MIN, MAX)}; 0 <= MIN <= MAX and MAX >= 1."""
    out: dict[str, tuple[int, int]] = {}
    for spec in specs:
        name, eq, scale = spec.partition("=")
        low, colon, high = scale.partition(":")
        if not eq or not name or not colon or not low.strip().isdigit() or not high.strip().isdigit():
            raise InputError(f"--autoscale: expected NAME=MIN:MAX with whole numbers, got {spec!r}")
        if int(low) > int(high):
            raise InputError(f"--autoscale: {name}: MIN {low} is above MAX {high}")
        if int(high) < 1:
            raise InputError(f"--autoscale: {name}: MAX must be at least 1, got {high}")
        out[name] = (int(low), int(high))
    return out


def replica_model(source: str, *, device: str = "cpu", dtype: str | None = None, max_pixels: int | None = None) -> Any:
    """The model of a replica, as ``vlmkit serve`` loads it: ``vlmkit.load(source)`` on the replica's
    GPU when Ray gave it one (a CPU-only ``--device cpu`` then becomes ``cuda``)."""
    import ray

    import vlmkit

    if device == "cpu" and ray.get_gpu_ids():
        device = "cuda"
    model = vlmkit.load(source, device=device, dtype=dtype)
    model.max_pixels = max_pixels
    return model


# -- the replica ---------------------------------------------------------------------------------


def _replica_name() -> str:
    try:
        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:  # noqa: BLE001 - outside a replica (tests calling the class directly)
        return "local"


def _picklable(value: Any) -> Any:
    """``value`` if it can travel to the server's process, else ``None``."""
    if value is None or not callable(value):
        return None
    try:
        pickle.dumps(value)
    except Exception:  # noqa: BLE001 - the server counts words instead
        return None
    return value


class ModelReplica:
    """One replica of one served model (the class Ray Serve deploys): the model, loaded here by
    ``factory``, a lock (models are not guaranteed thread-safe), and batched entry points."""

    def __init__(self, factory: Callable[[], Any], max_batch: int, window_s: float) -> None:
        self.model = factory()
        self.lock = threading.Lock()
        self.replica = _replica_name()
        for method in (self.embed_text, self.embed_image, self.caption, self.ask):
            method.set_max_batch_size(max_batch)  # type: ignore[attr-defined]
            method.set_batch_wait_timeout_s(window_s)  # type: ignore[attr-defined]

    def _locked(self, fn: Callable[[], Any]) -> Any:
        with self.lock:
            return fn()

    async def _run(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.to_thread(self._locked, fn)

    def info(self) -> dict[str, Any]:
        model = self.model
        kind = getattr(model, "kind", None)
        return {
            "name": getattr(model, "name", type(model).__name__),
            "label": str(getattr(kind, "label", type(model).__name__)),
            "architecture": str(getattr(kind, "architecture", type(model).__name__)),
            "tasks": sorted(getattr(kind, "tasks", ())),
            "image_size": getattr(model, "image_size", None),
            "max_pixels": getattr(model, "max_pixels", None),
            "dtype": str(getattr(model, "dtype", "")),
            "context": context_of(model),
            "tokenizer": _picklable(getattr(model, "tokenizer", None)),
            "counts_prompts": getattr(model, "prompt_tokens", None) is not None,
            "refusals": self._refusals(),
            "replica": self.replica,
        }

    def _refusals(self) -> dict[str, BaseException] | None:
        """What the model's ``require`` raises for each task it cannot do (``None``: it has no ``require``)."""
        require = getattr(self.model, "require", None)
        if require is None:
            return None
        out = {}
        for task in TASKS:
            try:
                require(task)
            except VlmkitError as exc:
                out[task] = exc
        return out

    async def call(self, task: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if task not in CALLS:
            raise InputError(f"a replica does not run {task!r}")
        fn = getattr(self.model, task)
        return await self._run(lambda: fn(*args, **kwargs))

    def chat_stream(self, messages: list[dict[str, Any]], options: Any) -> Iterator[str]:
        with self.lock:
            yield from self.model.chat(messages, stream=True, options=options)

    async def _batch(self, rows: list[Any], call: Callable[[list[Any]], Sequence[Any]]) -> list[tuple[Any, str, int]]:
        """``call(rows)`` under the lock; each result with this replica's name and the batch size.
        When the batch fails, each row runs alone, so one bad item fails only its own request (its
        result is then its exception, which :class:`RayModel` raises)."""

        def run() -> list[Any]:
            try:
                results = list(call(rows))
                if len(results) == len(rows):
                    return results
            except Exception as failure:  # noqa: BLE001 - find the failing row(s)
                if len(rows) == 1:
                    return [failure]
            out: list[Any] = []
            for row in rows:
                try:
                    (result,) = call([row])
                except Exception as error:  # noqa: BLE001 - handed to that row's request
                    result = error
                out.append(result)
            return out

        results = await self._run(run)
        return [(result, self.replica, len(rows)) for result in results]

    @serve.batch
    async def embed_text(self, texts: list[str]) -> list[tuple[Any, str, int]]:
        return await self._batch(texts, lambda batch: list(self.model.embed_texts(batch, batch_size=len(batch))))

    @serve.batch
    async def embed_image(self, images: list[Any]) -> list[tuple[Any, str, int]]:
        return await self._batch(images, lambda batch: list(self.model.embed_images(batch, batch_size=len(batch))))

    @serve.batch
    async def caption(self, images: list[Any], prompts: list[str | None], options: list[Any]) -> list[tuple[Any, str, int]]:
        def call(group: list[tuple[Any, ...]]) -> list[str]:
            return list(self.model.caption([r[0] for r in group], prompt=group[0][1], options=group[0][2], batch_size=len(group)))

        rows = list(zip(images, prompts, options, strict=True))
        return await self._batch(rows, lambda batch: grouped(batch, lambda r: (r[1], r[2]), call))

    @serve.batch
    async def ask(self, images: list[Any], questions: list[str], options: list[Any]) -> list[tuple[Any, str, int]]:
        def call(group: list[tuple[Any, ...]]) -> list[str]:
            return list(self.model.ask([r[0] for r in group], [r[1] for r in group], options=group[0][2], batch_size=len(group)))

        rows = list(zip(images, questions, options, strict=True))
        return await self._batch(rows, lambda batch: grouped(batch, lambda r: r[2], call))


# -- the server's side ---------------------------------------------------------------------------


def _unwrap(exc: BaseException) -> BaseException:
    """The exception to raise for a failed Serve call: the model's own error, or
    :class:`ReplicaUnavailable` when the replica died or cannot be reached."""
    from ray import exceptions as rx

    if isinstance(exc, rx.RayTaskError):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException) and not isinstance(cause, rx.RayError):
            return cause
    if isinstance(exc, rx.RayActorError | rx.ActorUnavailableError | rx.ActorDiedError | rx.NodeDiedError):
        return ReplicaUnavailable("the replica serving the request stopped")
    from ray.serve.exceptions import BackPressureError, RayServeException

    if isinstance(exc, BackPressureError | RayServeException):
        return ReplicaUnavailable(f"the model's replicas are not available: {str(exc).splitlines()[0]}")
    if isinstance(exc, rx.RayError):
        return ReplicaUnavailable(f"the model's replica failed: {type(exc).__name__}")
    return exc


@dataclass
class RayModel:
    """What the server holds in place of a model served by Ray: the calls it makes, forwarded to the
    deployment's replicas (``concurrency`` at once, so that every replica gets work)."""

    handle: Any
    info: dict[str, Any]
    concurrency: int
    timeout_s: float
    on_item: Callable[[str, int], None] = field(default=lambda replica, size: None)

    def __post_init__(self) -> None:
        info = self.info
        self.name: str = info["name"]
        self.kind = types.SimpleNamespace(label=info["label"], tasks=frozenset(info["tasks"]), architecture=info["architecture"])
        self.image_size, self.max_pixels, self.dtype = info["image_size"], info["max_pixels"], info["dtype"]
        self.context_length: int | None = info["context"]
        self.tokenizer = info["tokenizer"]  # the replica's own, so token counts are the same as in one process
        if not info["counts_prompts"]:
            self.prompt_tokens = None  # type: ignore[assignment]
        if info["refusals"] is None:
            self.require = None  # type: ignore[assignment]  # as the model: the server gives its own refusal

    def _result(self, response: Any) -> Any:
        try:
            return response.result(timeout_s=self.timeout_s)
        except TimeoutError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to the model's error or a 503
            raise _unwrap(exc) from None

    def _call(self, task: str, *args: Any, **kwargs: Any) -> Any:
        return self._result(self.handle.call.remote(task, args, kwargs))

    def _items(self, method: str, rows: list[tuple[Any, ...]]) -> list[Any]:
        responses = [getattr(self.handle, method).remote(*row) for row in rows]
        out, failure = [], None
        for response in responses:
            result, replica, size = self._result(response)
            self.on_item(replica, size)
            if isinstance(result, BaseException):
                failure = failure or result
            out.append(result)
        if failure is not None:  # the first item that failed (the server sends one item a call)
            raise failure
        return out

    # -- the model interface the server uses ------------------------------------------------------

    def require(self, task: str) -> None:
        """The model's own refusal, recorded by the replica (no call to make on the server's event loop)."""
        refusal = (self.info["refusals"] or {}).get(task)
        if refusal is not None:
            raise copy.copy(refusal)

    def prompt_tokens(self, messages: list[dict[str, Any]]) -> int:
        return int(self._call("prompt_tokens", messages))

    def embed_texts(self, texts: list[str], *, batch_size: int = 64) -> np.ndarray:
        return np.stack(self._items("embed_text", [(t,) for t in texts]))

    def embed_images(self, images: list[Any], *, batch_size: int = 64) -> np.ndarray:
        return np.stack(self._items("embed_image", [(i,) for i in images]))

    def caption(self, images: list[Any], prompt: str | None = None, *, options: Any = None, batch_size: int = 16) -> list[str]:
        return self._items("caption", [(image, prompt, options) for image in images])

    def ask(self, images: list[Any], questions: list[str], *, options: Any = None, batch_size: int = 16) -> list[str]:
        return self._items("ask", [(image, q, options) for image, q in zip(images, questions, strict=True)])

    def chat(self, messages: list[dict[str, Any]], *, stream: bool = False, options: Any = None) -> Any:
        if not stream:
            return self._call("chat", messages, options=options)
        return self._stream(messages, options)

    def _stream(self, messages: list[dict[str, Any]], options: Any) -> Iterator[str]:
        pieces = self.handle.options(stream=True).chat_stream.remote(messages, options)
        try:
            yield from pieces
        except Exception as exc:  # noqa: BLE001
            raise _unwrap(exc) from None

    def classify(self, images: list[Any], labels: list[str], *, top_k: int = 5) -> Any:
        return self._call("classify", images, labels, top_k=top_k)

    def match(self, image: Any, texts: list[str]) -> Any:
        return self._call("match", image, texts)


class RayEngine:
    """Deploys models on a Ray cluster (``address``; none: a Ray instance started here) and removes
    the deployments again on :meth:`shutdown`, or when a start fails half-way."""

    def __init__(self, *, address: str | None = None, replicas: dict[str, int] | None = None,
                 autoscale: dict[str, tuple[int, int]] | None = None, replica_cpus: float = 1.0,
                 connect_timeout_s: float = 10.0, autoscaling: dict[str, float] | None = None) -> None:
        """``autoscaling``: more of Serve's ``autoscaling_config`` for the autoscaled models (e.g.
        ``upscale_delay_s``; Serve's defaults otherwise)."""
        self.address = address
        self.replicas, self.autoscale = dict(replicas or {}), dict(autoscale or {})
        both = sorted(set(self.replicas) & set(self.autoscale))
        if both:
            raise InputError(f"--replicas and --autoscale both name {', '.join(both)}: give one")
        if not replica_cpus >= 0:
            raise InputError(f"--replica-cpus: expected a number of CPUs >= 0, got {replica_cpus}")
        self.replica_cpus, self.connect_timeout_s = replica_cpus, connect_timeout_s
        self.autoscaling = tuple(sorted((autoscaling or {}).items()))
        self.apps: list[str] = []
        self.metrics: Any = None  # the app's Metrics, set by create_api_app
        self._started_ray = False

    def scale(self, name: str) -> Scale:
        if name in self.autoscale:
            return Scale(autoscale=self.autoscale[name], tuning=self.autoscaling)
        return Scale(replicas=self.replicas.get(name, 1))

    def connect(self) -> None:
        """Join the cluster (or start Ray here); an address that does not answer is a one-line error."""
        import ray

        if self.address not in (None, "local", "auto"):
            _check_reachable(self.address, self.connect_timeout_s)
        if ray.is_initialized():  # this process is already a driver of a cluster (tests, notebooks)
            return
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # Serve's progress lines; vlmkit prints its own
        try:
            ray.init(address=self.address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise InputError(f"cannot join the Ray cluster at {self.address}: {str(exc).splitlines()[0]}") from None
        self._started_ray = True

    def check(self, names: Sequence[str]) -> None:
        """Every model the scales name is one of ``names``."""
        unknown = sorted((set(self.replicas) | set(self.autoscale)) - set(names))
        if unknown:
            raise InputError(f"--replicas/--autoscale name {', '.join(unknown)}, which is not served (models: {', '.join(names)})")

    def _report(self, model: str) -> Callable[[str, int], None]:
        def report(replica: str, batch: int) -> None:
            if self.metrics is not None:
                self.metrics.replica_item(model, replica, batch)

        return report

    def deploy(self, factories: dict[str, Callable[[], Any]], *, max_batch: int, window_ms: float,
               timeout_s: float) -> dict[str, RayModel]:
        """One Serve application a model; the :class:`RayModel` of each. Either every model starts or
        none stays deployed."""
        self.check(list(factories))
        self.connect()
        # In a thread of its own: Serve's blocking calls refuse a thread that runs an event loop.
        with ThreadPoolExecutor(1, thread_name_prefix="vlmkit-deploy") as pool:
            return pool.submit(self._deploy, factories, max_batch, window_ms, timeout_s).result()

    def _deploy(self, factories: dict[str, Callable[[], Any]], max_batch: int, window_ms: float,
                timeout_s: float) -> dict[str, RayModel]:
        gpus = _cluster_gpus()
        before = len(self.apps)
        try:
            serve.start(proxy_location="Disabled")
            models = {}
            for name, factory in factories.items():
                scale = self.scale(name)
                deployment = serve.deployment(ModelReplica).options(
                    name=name, max_ongoing_requests=MAX_ONGOING, max_constructor_retry_count=1,  # a model that fails to load fails again
                    ray_actor_options={"num_cpus": self.replica_cpus, "num_gpus": 1 if gpus else 0},
                    **scale.options(),
                )
                app = APP_PREFIX + name
                while app in self.apps:  # a second model of this name from the same engine
                    app += "+"
                self.apps.append(app)
                handle = serve.run(deployment.bind(factory, max_batch, window_ms / 1000.0), name=app, route_prefix=None)
                info = handle.info.remote().result(timeout_s=timeout_s)
                models[name] = RayModel(handle, info, concurrency=FORWARD_PER_REPLICA * scale.most, timeout_s=timeout_s,
                                        on_item=self._report(name))
        except BaseException as exc:
            _delete(self.apps[before:])  # what this call started; nothing stays half-deployed
            del self.apps[before:]
            if not self.apps:
                self.shutdown()
            if isinstance(exc, VlmkitError | KeyboardInterrupt):
                raise
            raise InputError(f"Ray Serve could not start the models: {_first_line(exc)}") from None
        return models

    def replica_states(self) -> dict[str, dict[str, int]]:
        """{model: {state: replicas}} from Serve's status."""
        out: dict[str, dict[str, int]] = {}
        try:
            applications = serve.status().applications
        except Exception:  # noqa: BLE001 - metrics are best-effort
            return out
        for app in self.apps:
            status = applications.get(app)
            for name, deployment in (status.deployments.items() if status else ()):
                out[name] = {str(state): int(n) for state, n in deployment.replica_states.items()}
        return out

    def shutdown(self) -> None:
        """Delete the deployed applications (and stop Ray if it was started here)."""
        import ray

        _delete(self.apps)
        self.apps.clear()
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
            self._started_ray = False


def _delete(apps: Sequence[str]) -> None:
    import ray

    if not ray.is_initialized():
        return
    for app in apps:  # all at once, then wait: each waits for its replicas' requests to finish
        try:
            serve.delete(app, _blocking=False)
        except Exception:  # noqa: BLE001, S110 - best effort at shutdown
            pass
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            left = set(apps) & set(serve.status().applications)
        except Exception:  # noqa: BLE001 - the controller is gone: nothing is left to wait for
            return
        if not left:
            return
        time.sleep(0.2)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def _check_reachable(address: str, timeout_s: float) -> None:
    """A one-line error, at once, when nothing listens at ``address`` (``host:port`` or ``ray://host:port``)."""
    where = address.removeprefix("ray://")
    host, colon, port = where.rpartition(":")
    if not colon or not port.isdigit():
        raise InputError(f"--address: expected HOST:PORT (the head node's GCS address), got {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise InputError(f"no Ray cluster answers at {address}: {exc.strerror or exc}") from None
