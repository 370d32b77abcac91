"""Closed-loop HTTP load on the vlmkit API, with the server in a process of its own.

What is measured
----------------
``--clients`` clients (asyncio tasks sharing one ``httpx.AsyncClient`` with one keep-alive
connection each) send requests back to back for ``--duration`` seconds: each waits for its answer
and sends the next at once (a closed loop, so the offered load adapts to the server). The request
is ``POST /v1/embeddings`` with one text (``--kind text``) or one JPEG as a ``data:`` URL
(``--kind image``), or ``POST /v1/caption`` with one JPEG (``--kind caption``). Bodies are
serialised before the run, so the clients spend their CPU on HTTP only. Embeddings are asked for
with ``encoding_format="base64"``, as the official OpenAI Python client does by default
(``--encoding float`` for JSON lists).

The measurement window opens once every client has had one answer (connections made, batchers
created, the queue in its steady state; at most ``settle`` seconds after the start) and lasts
``--duration`` seconds; only answers that arrive inside it are counted. Reported: requests/s, the
median and 99th-percentile latency of those answers, non-200 answers (429 "queue full" apart from
other errors) and failed connections, the mean number of items per model call (from the server's
``/metrics``), and how many CPU cores the server process, the client process and every other
process kept busy during the window (Linux ``/proc``). Client and server share the machine: on a
2-core CPU the clients' own CPU is part of what is measured.

Without ``--url`` the script starts the server itself: ``vlmkit_server.api.create_api_app`` over
``--model`` (``default`` = the built-in, a checkpoint path, or ``null``, a stand-in that answers at
once, to measure the HTTP stack alone) under uvicorn in a separate process (``multiprocessing``
with the spawn method), so clients and server do not share a GIL. uvicorn runs with what is
installed: the asyncio loop and h11 when uvloop and httptools are absent. Each model is wrapped in
:class:`TimedModel`, so the pass also reports the model's own time per item inside the server and
the share of the pass it was computing. (The listening socket is made with ``IPPROTO_TCP``: asyncio
turns Nagle's algorithm off only on sockets that say TCP, and without that every answer on a
kept-alive connection waits ~40 ms for the client's delayed ACK.)

The server process, the clients and the accounting are ``bench/_serving.py``'s, which
``bench/serve_batching.py`` runs on too.

How to run
----------
::

    python bench/serve_load.py                                   # built-in model, text, 32 clients, 20 s
    python bench/serve_load.py --kind image --clients 16 --duration 10
    python bench/serve_load.py --max-queue 16                    # a queue shorter than the clients: 429s
    python bench/serve_load.py --url http://127.0.0.1:8000 --model default   # a running `vlmkit serve`

With ``--url`` the server's CPU is counted under "other" (its process id is unknown), and the
model's own time is not reported (it needs the wrapper of a server started here).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from _measure import print_machine  # bench/ is sys.path[0] when run
from _serving import ServerProcess, load_test, sample_jpegs


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--url", default=None, help="a running server (default: start one in a subprocess)")
    parser.add_argument(
        "--model", default="default", help="model name (with --url) or vlmkit.load argument, or 'null'"
    )
    parser.add_argument(
        "--kind", choices=("text", "image", "caption"), default="text", help="what each request carries"
    )
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured (default 20)")
    parser.add_argument(
        "--encoding", choices=("base64", "float"), default="base64", help="embedding encoding asked for"
    )
    parser.add_argument(
        "--max-batch", type=int, default=None, help="ServerConfig.max_batch of the started server"
    )
    parser.add_argument(
        "--window-ms", type=float, default=None, help="ServerConfig.window_ms of the started server"
    )
    parser.add_argument(
        "--max-queue", type=int, default=None, help="ServerConfig.max_queue of the started server"
    )
    parser.add_argument(
        "--image-side", type=int, default=640, help="longest side of the JPEGs sent (default 640)"
    )
    args = parser.parse_args(argv)
    if args.clients < 1 or args.duration <= 0:
        parser.error("--clients must be >= 1 and --duration > 0")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    print_machine()
    jpegs = sample_jpegs(side=args.image_side) if args.kind != "text" else []
    fields = {
        k: v
        for k, v in (
            ("max_batch", args.max_batch),
            ("window_ms", args.window_ms),
            ("max_queue", args.max_queue),
        )
        if v is not None
    }
    if args.url is not None:
        result = load_test(args.url, args.kind, args.model, args.clients, args.duration, jpegs, args.encoding)
    else:
        from vlmkit_server.api import ServerConfig

        config = ServerConfig(**fields)
        print(
            f"server: model {args.model!r}; max_batch {config.max_batch}, window {config.window_ms:g} ms, "
            f"max_queue {config.max_queue}"
        )
        with ServerProcess({"m": args.model}, {"load": fields}) as server:
            print(
                f"server started in {server.start_seconds:.1f} s (pid {server.pid}, torch threads {server.torch_threads})"
            )
            result = load_test(
                server.urls["load"],
                args.kind,
                "m",
                args.clients,
                args.duration,
                jpegs,
                args.encoding,
                server.pid,
            )
    print(f"{args.clients} clients, {args.kind}, {result.seconds:.1f} s measured: {result.describe()}")
    print(f"answers by status: {dict(sorted(result.statuses.items()))}; failed connections {result.failures}")
    print_machine()


if __name__ == "__main__":
    main()
