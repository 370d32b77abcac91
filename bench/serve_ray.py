"""The API served by one process against the same API with the model on Ray Serve replicas.

What is measured
----------------
For each setup, ``vlmkit serve`` runs as its own process (the command a user types) and
``bench/_serving.py``'s closed-loop load test (``--clients`` clients for ``--duration`` seconds,
the answers inside the window only) sends one text (``--kind text``) or one 640-px JPEG
(``--kind image``) per ``POST /v1/embeddings``:

- ``local``: ``vlmkit serve --model default`` (the model in the server's process);
- ``ray xN``: ``vlmkit serve --engine ray --replicas default=N`` on a Ray instance started by the
  server (this machine only), for each N of ``--replicas``.

Reported per setup: requests/s, median and 99th-percentile latency, non-200 answers, and the ratio
of requests/s to ``local``. The setups run one after another, each with a fresh server, on the
same machine; run it with nothing else working (a load test on a 2-core CPU measures contention
otherwise). On one machine, Ray's replicas add an HTTP-to-replica hop (the request crosses to
another process and back) and share the same cores: the figure is the engine's cost here, not the
scaling a cluster gives.

With ``--kill`` it also runs the fault drill of tests/test_serve_ray.py at this scale: two
replicas, a replica killed by ``ray.kill`` a third of the way into a load test, and the answers
counted by status (503s are the requests that were on the killed replica).

How to run
----------
::

    python bench/serve_ray.py                      # text and image, local / ray x1 / ray x2, 10 s each
    python bench/serve_ray.py --kind text --duration 5 --replicas 1
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
from _measure import print_machine  # bench/ is sys.path[0] when run
from _serving import load_test, sample_jpegs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Serve:
    """``vlmkit serve ARGS`` in a process of its own, until the block ends (Ctrl-C, as a user stops it)."""

    def __init__(self, args: Sequence[str]) -> None:
        self.port = free_port()
        self.args = [sys.executable, "-m", "vlmkit_cli.main", "serve", "--port", str(self.port), *args]

    def __enter__(self) -> str:
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        began = time.perf_counter()
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        url = f"http://127.0.0.1:{self.port}"
        while self.proc.poll() is None:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        if self.proc.poll() is not None:
            raise SystemExit(f"`{' '.join(self.args[2:])}` failed:\n{self.proc.stderr.read() if self.proc.stderr else ''}")
        self.started = time.perf_counter() - began
        return url

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


def kill_drill(clients: int, duration: float) -> dict[str, object]:
    """Two replicas, one killed a third of the way into a load test: the answers by status."""
    import threading

    import ray

    figures: dict[str, object] = {}
    with Serve(["--engine", "ray", "--model", "default", "--replicas", "default=2", "--replica-cpus", "0.5"]) as url:
        ray.init(address="auto", log_to_driver=False)

        def kill() -> None:
            from ray.util.state import list_actors

            time.sleep(duration / 3)
            replicas = [a.name for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
                        if a.class_name.startswith("ServeReplica:vlmkit-default")]
            ray.kill(ray.get_actor(replicas[0], namespace="serve"), no_restart=True)
            figures["killed"] = replicas[0]

        killer = threading.Thread(target=kill)
        killer.start()
        result = load_test(url, "text", "default", clients, duration, [])
        killer.join()
        after = [httpx.post(f"{url}/v1/embeddings", json={"model": "default", "input": f"after {i}"}, timeout=60).status_code
                 for i in range(50)]
        ray.shutdown()
    figures.update(statuses=dict(result.statuses), failures=result.failures, later_ok=after.count(200), later=len(after))
    return figures


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--kind", choices=("text", "image", "both"), default="both")
    parser.add_argument("--replicas", default="1,2", help="replica counts to run (default 1,2)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--replica-cpus", type=float, default=0.5, help="CPUs each replica reserves (default 0.5)")
    parser.add_argument("--kill", action="store_true", help="also run the replica-kill drill")
    parser.add_argument("--out", default=None, help="write figures.json here")
    args = parser.parse_args(argv)
    print_machine()
    kinds = ("text", "image") if args.kind == "both" else (args.kind,)
    jpegs = sample_jpegs() if "image" in kinds else []
    setups = [("local", ["--model", "default"])] + [
        (f"ray x{n}", ["--engine", "ray", "--model", "default", "--replicas", f"default={n}", "--replica-cpus", str(args.replica_cpus)])
        for n in (int(x) for x in args.replicas.split(","))
    ]
    rows = []
    for name, serve_args in setups:
        with Serve(serve_args) as url:
            for kind in kinds:
                result = load_test(url, kind, "default", args.clients, args.duration, jpegs)
                rate = result.rps
                rows.append({"setup": name, "kind": kind, "rps": rate, "p50": result.percentile(50), "p99": result.percentile(99),
                             "errors": sum(n for s, n in result.statuses.items() if s != 200) + result.failures})
                print(f"{name:8s} {kind:5s} {result.describe()}", flush=True)
    local = {row["kind"]: row["rps"] for row in rows if row["setup"] == "local"}
    print(f"\n{args.clients} clients, {args.duration:g} s a pass, built-in model, POST /v1/embeddings\n")
    print("| setup | kind | req/s | p50 ms | p99 ms | non-200 | vs local |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['setup']} | {row['kind']} | {row['rps']:.1f} | {row['p50']:.0f} | {row['p99']:.0f} | {row['errors']} | "
              f"{row['rps'] / local[row['kind']]:.2f}x |")
    figures: dict[str, object] = {"rows": rows, "clients": args.clients, "duration": args.duration}
    if args.kill:
        drill = kill_drill(args.clients, max(args.duration, 9.0))
        figures["kill"] = drill
        print(f"\nreplica killed under load: answers by status {drill['statuses']}, failed connections {drill['failures']}; "
              f"afterwards {drill['later_ok']} of {drill['later']} requests answered 200")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "figures.json").write_text(json.dumps(figures, indent=2))
        print(f"figures: {out / 'figures.json'}")
    print_machine()


if __name__ == "__main__":
    main()
