"""``vlmkit serve --engine ray`` on a local cluster of two worker nodes: a replica killed under load,
per-replica metrics, graceful shutdown, the command line, and the bad settings (an address nobody
answers at, 0 replicas, MIN > MAX, a start that fails half-way leaves nothing deployed).

The API, pages, errors and limits run against both engines in tests/test_serve_api.py (the
``engine`` fixture); this file holds what only the Ray engine has.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import ray
from ray import serve
from test_serve_api import live_server

from vlmkit.errors import InputError
from vlmkit_server import ServerConfig, create_api_app
from vlmkit_server.ray_engine import RayEngine, parse_autoscale, parse_replicas


class SlowEmbedder:
    """Embeds a text as its length and first letter, after ``delay`` seconds a batch (so that
    requests are in flight on a replica when it is killed)."""

    name = "slow-embedder"
    kind = type("Kind", (), {"tasks": frozenset({"embed"}), "label": "slow embedder", "architecture": "fake"})()

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def embed_texts(self, texts: list[str], *, batch_size: int = 64) -> np.ndarray:
        time.sleep(self.delay)
        return np.array([[len(t), ord(t[0]) if t else 0, 1.0] for t in texts], dtype=np.float32)


class Picky(SlowEmbedder):
    """Refuses one text; a batch with it in fails as a whole."""

    def embed_texts(self, texts: list[str], *, batch_size: int = 64) -> np.ndarray:
        if "boom" in texts:
            raise InputError("this embedder refuses 'boom'")
        return super().embed_texts(texts, batch_size=batch_size)


class Broken:
    def __init__(self) -> None:
        raise RuntimeError("this model cannot load")


def _broken() -> Any:
    return Broken()


@pytest.fixture(scope="module")
def cluster(ray_cluster: Any) -> Any:
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the replicas cannot import tests/
    return ray_cluster


def _ours() -> set[str]:
    return {name for name in serve.status().applications if name.startswith("vlmkit-")}


def _replica_actors(app: str) -> list[str]:
    from ray.util.state import list_actors

    alive = list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
    return [a.name for a in alive if a.class_name == f"ServeReplica:{app}:{app.removeprefix('vlmkit-')}"]


@pytest.fixture
def two_replicas(cluster: Any) -> Iterator[tuple[str, RayEngine]]:
    engine = RayEngine(replicas={"embed": 2}, replica_cpus=0.25)
    config = ServerConfig(max_batch=4, window_ms=2, timeout_s=30)
    models = engine.deploy({"embed": lambda: SlowEmbedder(0.05)}, max_batch=config.max_batch, window_ms=config.window_ms,
                           timeout_s=config.timeout_s)
    with live_server(create_api_app(models, config, engine=engine)) as url:
        yield url, engine
    assert _ours() == set(), "the app's shutdown deletes its deployments"


def test_a_replica_killed_under_load(two_replicas: tuple[str, RayEngine]) -> None:
    """Requests in flight on the killed replica may fail with a 503 and Retry-After; none hangs,
    nothing else fails, and every request after the wave succeeds."""
    url, engine = two_replicas
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
    assert len(_replica_actors("vlmkit-embed")) == 2
    outcomes: list[Any] = []
    started = threading.Event()

    def one(i: int) -> Any:
        if i == 16:
            started.set()
        try:
            reply = client.embeddings.create(model="embed", input=[f"text {i}", f"more {i}"])
            return [d.embedding for d in reply.data]
        except openai.APIStatusError as exc:
            return exc
        except openai.APITimeoutError as exc:  # a hang: the test fails on it below
            return exc

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(120)]
        started.wait(30)
        victim = _replica_actors("vlmkit-embed")[0]
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        outcomes = [f.result(timeout=90) for f in futures]
    failed = [o for o in outcomes if isinstance(o, Exception)]
    assert not [o for o in failed if not isinstance(o, openai.APIStatusError)], failed  # no timeouts: nothing hung
    assert all(o.status_code == 503 and o.response.headers.get("retry-after") for o in failed), [str(o) for o in failed]
    assert all("the replica serving the request stopped" in str(o) for o in failed)
    good = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(good) + len(failed) == 120 and len(good) >= 100
    for i, outcome in enumerate(outcomes):  # every answer is its own request's (the fake's values are exact in float32)
        if not isinstance(outcome, Exception):
            assert outcome == [[len(f"text {i}"), ord("t"), 1.0], [len(f"more {i}"), ord("m"), 1.0]]
    later = [client.embeddings.create(model="embed", input=f"after {i}") for i in range(20)]
    assert [len(r.data) for r in later] == [1] * 20
    # Serve replaced the killed replica.
    deadline = time.monotonic() + 60
    while engine.replica_states().get("embed", {}).get("RUNNING", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert engine.replica_states()["embed"]["RUNNING"] == 2


def test_per_replica_metrics(two_replicas: tuple[str, RayEngine]) -> None:
    url, _ = two_replicas
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: httpx.post(f"{url}/v1/embeddings", json={"model": "embed", "input": [f"t{i}"] * 3},
                                                      timeout=60), range(24)))
    assert [r.status_code for r in replies] == [200] * 24
    text = httpx.get(f"{url}/metrics").text
    items = dict(re.findall(r'^vlmkit_replica_items_total\{model="embed",replica="([^"]+)"\} ([0-9.]+)$', text, re.MULTILINE))
    assert sum(float(v) for v in items.values()) == 72  # every item served, and counted by the replica that served it
    assert len(items) == 2, items  # 24 concurrent requests reach both replicas
    assert 'vlmkit_replicas{model="embed",state="RUNNING"} 2.0' in text
    assert re.search(r'^vlmkit_replica_batch_size_count\{model="embed",replica="[^"]+"\} ', text, re.MULTILINE)


def test_one_bad_item_in_a_replica_batch_fails_only_its_own_request(cluster: Any) -> None:
    engine = RayEngine(replica_cpus=0.25)
    # The server sends each request on its own (no batch of its own to retry item by item); the
    # replica's long window puts the concurrent requests in one batch.
    config = ServerConfig(max_batch=1, window_ms=0, timeout_s=30)
    models = engine.deploy({"picky": lambda: Picky(0.0)}, max_batch=8, window_ms=300, timeout_s=config.timeout_s)
    texts = ["one", "two", "boom", "three", "four", "five"]
    with live_server(create_api_app(models, config, engine=engine)) as url, ThreadPoolExecutor(len(texts)) as pool:
        replies = list(pool.map(lambda t: httpx.post(f"{url}/v1/embeddings", json={"model": "picky", "input": t}, timeout=60), texts))
        text = httpx.get(f"{url}/metrics").text
    assert [r.status_code for r in replies] == [200, 200, 400, 200, 200, 200]
    assert "refuses 'boom'" in replies[2].json()["error"]["message"]
    assert [r.json()["data"][0]["embedding"][0] for r in replies if r.status_code == 200] == [3, 3, 5, 4, 4]
    alone = re.search(r'^vlmkit_replica_batch_size_bucket\{le="1.0",model="picky",replica="[^"]+"\} ([0-9.]+)$', text, re.MULTILINE)
    count = re.search(r'^vlmkit_replica_batch_size_count\{model="picky",replica="[^"]+"\} ([0-9.]+)$', text, re.MULTILINE)
    assert alone is not None and count is not None
    assert float(count.group(1)) == 6 and float(alone.group(1)) < 6  # each request once, and some shared a replica batch


@pytest.mark.filterwarnings("ignore:The `metrics_interval_s` field:DeprecationWarning")  # the test's short interval; Serve's default needs none
def test_autoscaling_adds_a_replica_under_load(cluster: Any) -> None:
    """--autoscale NAME=1:2: sixteen clients on a model that takes 0.3 s a call start a second replica
    (Serve's delays shortened here; with its defaults the second replica came after about 40 s)."""
    engine = RayEngine(autoscale={"slow": (1, 2)}, replica_cpus=0.25,
                       autoscaling={"upscale_delay_s": 1, "metrics_interval_s": 1, "look_back_period_s": 2})
    config = ServerConfig(max_batch=1, window_ms=0, timeout_s=60)
    models = engine.deploy({"slow": lambda: SlowEmbedder(0.3)}, max_batch=1, window_ms=0, timeout_s=60)
    assert engine.replica_states()["slow"] == {"RUNNING": 1}
    done = threading.Event()
    with live_server(create_api_app(models, config, engine=engine)) as url:

        def client() -> list[int]:
            statuses = []
            while not done.is_set():
                statuses.append(httpx.post(f"{url}/v1/embeddings", json={"model": "slow", "input": "x"}, timeout=60).status_code)
            return statuses

        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(client) for _ in range(16)]
            deadline = time.monotonic() + 90
            while engine.replica_states()["slow"].get("RUNNING", 0) < 2 and time.monotonic() < deadline:
                time.sleep(0.5)
            done.set()
            statuses = [s for f in futures for s in f.result(timeout=90)]
        states = engine.replica_states()["slow"]
    assert states.get("RUNNING") == 2, states
    assert set(statuses) == {200}


def test_a_start_that_fails_half_way_leaves_nothing_deployed(cluster: Any) -> None:
    engine = RayEngine(replica_cpus=0.25)
    with pytest.raises(InputError, match="could not start the models"):
        engine.deploy({"fine": lambda: SlowEmbedder(0.0), "broken": _broken}, max_batch=2, window_ms=1, timeout_s=30)
    assert _ours() == set()


def test_bad_scales_are_one_line_errors() -> None:
    with pytest.raises(InputError, match="at least 1 replica"):
        parse_replicas(["blip=0"])
    with pytest.raises(InputError, match="expected NAME=N"):
        parse_replicas(["blip"])
    with pytest.raises(InputError, match="MIN 3 is above MAX 1"):
        parse_autoscale(["blip=3:1"])
    with pytest.raises(InputError, match="expected NAME=MIN:MAX"):
        parse_autoscale(["blip=2"])
    with pytest.raises(InputError, match="both name blip"):
        RayEngine(replicas={"blip": 2}, autoscale={"blip": (1, 2)})
    with pytest.raises(InputError, match="CPUs >= 0"):
        RayEngine(replica_cpus=-1)
    with pytest.raises(InputError, match="not served"):
        RayEngine(replicas={"llava": 2}).deploy({"blip": lambda: None}, max_batch=1, window_ms=0, timeout_s=1)


def test_an_address_nobody_answers_at() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    started = time.monotonic()
    with pytest.raises(InputError, match=f"no Ray cluster answers at 127.0.0.1:{port}"):
        RayEngine(address=f"127.0.0.1:{port}", connect_timeout_s=2).connect()
    assert time.monotonic() - started < 30


def _vlmkit(*args: str, **options: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vlmkit_cli.main", *args], capture_output=True, text=True, timeout=120, **options)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--engine", "ray", "--replicas", "default=0"], "needs at least 1 replica"),
        (["--engine", "ray", "--autoscale", "default=4:2"], "MIN 4 is above MAX 2"),
        (["--engine", "ray", "--replicas", "blip=2"], "blip, which is not served"),
        (["--replicas", "default=2"], "need --engine ray"),
        (["--engine", "ray", "--address", "127.0.0.1:1"], "no Ray cluster answers at 127.0.0.1:1"),
    ],
)
def test_cli_refuses_bad_ray_settings(args: list[str], words: str) -> None:
    done = _vlmkit("serve", "--model", "default", *args)
    assert done.returncode != 0 and words in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_cli_serves_through_ray_and_removes_its_deployments_on_exit(cluster: Any) -> None:
    """`vlmkit serve --engine ray --address ...` joins the cluster, serves the built-in from two
    replicas through the real openai client (the same vectors as the library), and deletes its
    deployments when stopped with Ctrl-C."""
    import vlmkit

    address = ray.get_runtime_context().gcs_address
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    server = subprocess.Popen(
        [sys.executable, "-m", "vlmkit_cli.main", "serve", "--engine", "ray", "--address", address, "--model", "default",
         "--replicas", "default=2", "--replica-cpus", "0.25", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        assert server.poll() is None, server.communicate()[1]
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=60)
        reply = client.embeddings.create(model="default", input=["a red circle", "a cat"])
        expected = vlmkit.load("default").embed_texts(["a red circle", "a cat"])
        # rtol: the same weights and inputs in another process; float32 sums may differ in the last bits.
        np.testing.assert_allclose(np.array([d.embedding for d in reply.data]), expected, rtol=1e-5, atol=1e-6)
        assert _ours() == {"vlmkit-default"}
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0, err
    assert "Ray Serve replicas: default x2" in err
    assert _ours() == set()
