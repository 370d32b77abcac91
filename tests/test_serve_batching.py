"""Dynamic batching (:class:`vlmkit_server.batching.DynamicBatcher`) and tandem routing
(:func:`vlmkit_server.routing.choose_route`), as plain units: no models, no HTTP."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

import pytest
from fastapi.testclient import TestClient

from vlmkit_server.batching import DynamicBatcher, QueueFull, ShuttingDown
from vlmkit_server.routing import Route, Routes, choose_route

# -- batching ----------------------------------------------------------------------------------------


class Recorder:
    """A batch function that records each batch it is given and returns the items doubled."""

    def __init__(self, delay: float = 0.0, fail_on: object = None) -> None:
        self.batches: list[list[Any]] = []
        self.delay = delay
        self.fail_on = fail_on

    def __call__(self, items: list[Any]) -> list[Any]:
        self.batches.append(list(items))
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"cannot take {self.fail_on!r}")
        return [item * 2 for item in items]

    @property
    def sizes(self) -> list[int]:
        return [len(batch) for batch in self.batches]


@pytest.fixture()
def batchers() -> Iterator[Callable[..., DynamicBatcher]]:
    """Make batchers, and close them all at the end of the test."""
    made: list[DynamicBatcher] = []

    def make(fn: Callable[[list[Any]], list[Any]], **options: Any) -> DynamicBatcher:
        made.append(DynamicBatcher(fn, **options))
        return made[-1]

    yield make
    for batcher in made:
        batcher.close()


def results(futures: list[Future[Any]], timeout: float = 10) -> list[Any]:
    return [future.result(timeout=timeout) for future in futures]


def test_requests_within_the_window_share_one_call(batchers: Callable[..., DynamicBatcher]) -> None:
    fn = Recorder()
    seen: list[int] = []
    batcher = batchers(fn, window_ms=300, max_batch=16, on_batch=seen.append)
    futures = [batcher.submit(i) for i in range(5)]
    assert results(futures) == [0, 2, 4, 6, 8]
    assert fn.batches == [[0, 1, 2, 3, 4]] and seen == [5]


def test_requests_apart_get_their_own_calls(batchers: Callable[..., DynamicBatcher]) -> None:
    fn = Recorder()
    batcher = batchers(fn, window_ms=0)
    for i in range(3):
        assert batcher.submit(i).result(timeout=10) == 2 * i
    assert fn.sizes == [1, 1, 1]


def test_max_batch_is_respected(batchers: Callable[..., DynamicBatcher]) -> None:
    fn = Recorder()
    batcher = batchers(fn, window_ms=300, max_batch=3)
    futures = [batcher.submit(i) for i in range(7)]
    assert results(futures) == [2 * i for i in range(7)]
    assert fn.sizes == [3, 3, 1]
    assert [x for batch in fn.batches for x in batch] == list(range(7))  # in order


def test_the_async_interface(batchers: Callable[..., DynamicBatcher]) -> None:
    fn = Recorder()
    batcher = batchers(fn, window_ms=300)

    async def main() -> list[Any]:
        return list(await asyncio.gather(*(batcher(i) for i in range(4))))

    assert asyncio.run(main()) == [0, 2, 4, 6]
    assert fn.sizes == [4]


def test_a_full_queue_refuses_at_once(batchers: Callable[..., DynamicBatcher]) -> None:
    started, release = threading.Event(), threading.Event()

    def blocking(items: list[Any]) -> list[Any]:
        started.set()
        release.wait(10)
        return items

    batcher = batchers(blocking, window_ms=0, max_batch=1, max_queue=2)
    first = batcher.submit("running")
    assert started.wait(10)  # the worker holds the first item; the queue is empty again
    queued = [batcher.submit("a"), batcher.submit("b")]
    assert batcher.depth == 2
    with pytest.raises(QueueFull, match="2 requests already waiting"):
        batcher.submit("c")
    assert not first.done()  # refused while the worker still held the first item: it did not wait for room
    release.set()
    assert results([first, *queued]) == ["running", "a", "b"]
    assert batcher.submit("d").result(timeout=10) == "d"  # room again
    assert batcher.depth == 0


def test_one_failing_item_fails_only_its_own_future(batchers: Callable[..., DynamicBatcher]) -> None:
    fn = Recorder(fail_on="bad")
    batcher = batchers(fn, window_ms=300)
    futures = [batcher.submit(x) for x in ("a", "bad", "c")]
    assert futures[0].result(timeout=10) == "aa" and futures[2].result(timeout=10) == "cc"
    with pytest.raises(ValueError, match="cannot take 'bad'"):
        futures[1].result(timeout=10)
    assert fn.batches == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]  # the batch, then each alone
    assert batcher.submit("d").result(timeout=10) == "dd"  # the worker lives on


def test_a_wrong_number_of_results_is_an_error(batchers: Callable[..., DynamicBatcher]) -> None:
    batcher = batchers(lambda items: [0], window_ms=300)
    futures = [batcher.submit(x) for x in range(3)]
    assert [f.result(timeout=10) for f in futures] == [0, 0, 0]  # retried one by one, where one result is right
    short = batchers(lambda items: [], window_ms=0)
    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        short.submit(1).result(timeout=10)


def test_a_cancelled_request_is_skipped(batchers: Callable[..., DynamicBatcher]) -> None:
    started, release = threading.Event(), threading.Event()
    seen: list[Any] = []

    def fn(items: list[Any]) -> list[Any]:
        started.set()
        release.wait(10)
        seen.extend(items)
        return items

    batcher = batchers(fn, window_ms=0, max_batch=4)
    first = batcher.submit(1)
    assert started.wait(10)
    gone, kept = batcher.submit(2), batcher.submit(3)
    assert gone.cancel()
    release.set()
    assert results([first, kept]) == [1, 3]
    assert seen == [1, 3]


def test_close_finishes_queued_work(batchers: Callable[..., DynamicBatcher]) -> None:
    fn = Recorder(delay=0.05)
    batcher = batchers(fn, window_ms=0, max_batch=1)
    futures = [batcher.submit(i) for i in range(5)]
    batcher.close()
    assert all(f.done() for f in futures) and results(futures) == [0, 2, 4, 6, 8]
    assert fn.sizes == [1] * 5
    with pytest.raises(ShuttingDown):
        batcher.submit(5)
    batcher.close()  # twice is fine


def test_close_while_submitting_loses_nothing(batchers: Callable[..., DynamicBatcher]) -> None:
    """Every request the batcher accepted is answered, however submit and close interleave."""
    for _ in range(8):
        batcher = batchers(Recorder(), window_ms=1, max_batch=64, max_queue=10_000)
        accepted: list[Future[Any]] = []
        refused = threading.Event()

        def submit_many(
            batcher: DynamicBatcher = batcher, accepted: list[Future[Any]] = accepted, refused: threading.Event = refused
        ) -> None:
            for i in range(10_000):
                try:
                    accepted.append(batcher.submit(i))
                except ShuttingDown:
                    refused.set()
                    return
                except QueueFull:
                    time.sleep(0.001)

        threads = [threading.Thread(target=submit_many) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(0.002)
        batcher.close()
        for thread in threads:
            thread.join(10)
        done, pending = wait(accepted, timeout=10)
        assert not pending and refused.is_set()


def test_a_shared_lock_serialises_two_batchers(batchers: Callable[..., DynamicBatcher]) -> None:
    def overlap(lock_a: threading.Lock, lock_b: threading.Lock) -> int:
        busy, most = 0, 0
        guard = threading.Lock()

        def fn(items: list[Any]) -> list[Any]:
            nonlocal busy, most
            with guard:
                busy += 1
                most = max(most, busy)
            time.sleep(0.05)
            with guard:
                busy -= 1
            return items

        a = batchers(fn, window_ms=0, max_batch=1, lock=lock_a, name="model/caption")
        b = batchers(fn, window_ms=0, max_batch=1, lock=lock_b, name="model/embed")
        futures = [batcher.submit(i) for i in range(4) for batcher in (a, b)]
        results(futures)
        return most

    shared = threading.Lock()
    assert overlap(shared, shared) == 1
    assert overlap(threading.Lock(), threading.Lock()) == 2  # the check can see overlap when there is some


def test_bad_settings() -> None:
    for options in ({"max_batch": 0}, {"max_queue": 0}, {"window_ms": -1}):
        with pytest.raises(ValueError):
            DynamicBatcher(lambda items: items, **options)


# -- routing -----------------------------------------------------------------------------------------

VQA = frozenset({"ask"})
CAPTIONER = frozenset({"caption"})
LLAVA = frozenset({"caption", "ask", "generate", "chat"})
CLIP = frozenset({"embed", "similarity", "classify", "match"})
CAN = {"vqa": VQA, "llava": LLAVA, "cap": CAPTIONER, "clip": CLIP}
TANDEM = Routes(precise="vqa", conversational="llava")


def route(
    routes: Routes = TANDEM, *texts: str, turns: int = 0, max_tokens: int | None = None, can: dict[str, frozenset[str]] = CAN,
    images: int = 1,
) -> Route:
    return choose_route(routes, texts=list(texts), turns=turns, max_tokens=max_tokens, can=can, images=images)


@pytest.mark.parametrize(
    "texts, turns, max_tokens, expected",
    [
        # 1. an assistant turn: dialogue, whatever the text
        (["What colour is it?"], 1, None, Route("llava", "chat", "multi-turn dialogue")),
        ([], 2, 5, Route("llava", "chat", "multi-turn dialogue")),
        # 2. a long answer is wanted
        (["What colour is it?"], 0, 65, Route("llava", "chat", "a long answer (max_tokens 65 > 64)")),
        # 3. no text, or a caption request: the precise side, as a caption (a VQA model cannot: see below)
        # 4. open-ended words
        (["Why is the sky blue?"], 0, None, Route("llava", "chat", "an open-ended request ('why')")),
        (["Please write a poem about this."], 0, None, Route("llava", "chat", "an open-ended request ('write')")),
        (["How does this work?"], 0, None, Route("llava", "chat", "an open-ended request ('how')")),
        (["How many cats are there?"], 0, None, Route("vqa", "ask", "a short question (5 words)")),  # a fact
        (["EXPLAIN", "this"], 0, 64, Route("llava", "chat", "an open-ended request ('explain')")),
        # 5. a short question
        (["What colour is the cat?"], 0, None, Route("vqa", "ask", "a short question (5 words)")),
        (["  Is it", " a dog? "], 0, 10, Route("vqa", "ask", "a short question (4 words)")),
        (["one two three four five six seven eight nine ten eleven twelve"], 0, None, Route("vqa", "ask", "a short question (12 words)")),
        # 6. anything else
        (
            ["one two three four five six seven eight nine ten eleven twelve thirteen"],
            0,
            None,
            Route("llava", "chat", "a long request (13 words)"),
        ),
    ],
)
def test_each_rule(texts: list[str], turns: int, max_tokens: int | None, expected: Route) -> None:
    assert route(TANDEM, *texts, turns=turns, max_tokens=max_tokens) == expected


@pytest.mark.parametrize(
    "texts",
    [
        [],
        [""],
        ["   "],
        ["Describe this image."],
        ["caption"],
        ["Write a caption"],
        ["please write a caption!"],
        ["What's in the picture?"],
        ["what is on this photo"],
        ["What do you see?"],
        ["describe the photo briefly"],
    ],
)
def test_caption_requests_go_to_the_precise_side(texts: list[str]) -> None:
    assert route(Routes(precise="cap", conversational="llava"), *texts) == Route("cap", "caption", "a caption request")
    # A precise model that cannot caption: the conversational side captions instead, and says so ...
    assert route(TANDEM, *texts) == Route("llava", "caption", "a caption request; the preferred model cannot do it")
    # ... or chats, when it cannot caption either.
    chat_only = {"vqa": VQA, "chatter": frozenset({"chat"})}
    assert route(Routes(precise="vqa", conversational="chatter"), *texts, can=chat_only).task == "chat"


def test_not_caption_requests() -> None:
    """Words of a caption request inside a longer question do not make it one."""
    assert route(Routes(precise="cap", conversational="llava"), "describe this image's colours").model == "llava"
    assert route(TANDEM, "what is in the cup?").reason == "a short question (5 words)"


def test_fallbacks_when_a_side_is_missing() -> None:
    # No precise side: the conversational model answers the short question itself.
    assert route(Routes(conversational="llava"), "What colour?") == Route(
        "llava", "ask", "a short question (2 words); the preferred model cannot do it"
    )
    # No conversational side: the VQA model answers an open-ended question as best it can.
    assert route(Routes(precise="vqa"), "Why is it here?") == Route(
        "vqa", "ask", "an open-ended request ('why'); the preferred model cannot do it"
    )
    # A side naming a model that is not loaded is skipped like a missing one.
    assert route(Routes(precise="gone", conversational="llava"), "What colour?").model == "llava"
    # A conversational side that can only caption still answers dialogue without text.
    assert route(Routes(conversational="cap"), turns=1) == Route("cap", "caption", "multi-turn dialogue")


def test_lookup_error_when_nothing_can() -> None:
    with pytest.raises(LookupError, match="no configured model can answer an open-ended request"):
        route(Routes(precise="cap"), "Why is it here?")  # a caption does not answer a question
    with pytest.raises(LookupError, match="a short question"):
        route(Routes(precise="clip", conversational="clip"), "What colour?")
    with pytest.raises(LookupError, match="a caption request"):
        route(Routes(precise="vqa"), "Describe this image.")
    with pytest.raises(LookupError, match="no served model can answer a short question"):
        route(Routes(), "anything", can={"clip": CLIP})  # no sides: by capability, and none can
    with pytest.raises(LookupError):
        route(TANDEM, "What colour?", can={})


def test_several_images_go_to_a_chat_model() -> None:
    """Models that answer about one image (BLIP VQA, captioners) take one per prompt: several images
    in the conversation need a chat model, whatever the text."""
    assert route(TANDEM, "What colour?", images=2) == Route("llava", "chat", "2 images in the conversation")
    assert route(Routes(), "Describe this image.", images=3).model == "llava"  # not the captioner
    with pytest.raises(LookupError, match="no configured model can answer 2 images in the conversation"):
        route(Routes(precise="vqa", conversational="cap"), "What colour?", images=2)


def test_without_sides_the_first_capable_model_answers() -> None:
    """No --route: every served model is a candidate, in serving order, best task first."""
    picked = "; picked by what the served models can do"
    assert route(Routes(), "What colour?") == Route("vqa", "ask", "a short question (2 words)" + picked)
    assert route(Routes(), "Describe this image.") == Route("cap", "caption", "a caption request" + picked)  # before llava
    assert route(Routes(), "Describe this image.", can={"vqa": VQA, "llava": LLAVA}).model == "llava"
    assert route(Routes(), "Why is it here?") == Route("llava", "chat", "an open-ended request ('why')" + picked)
    # One model: it answers whatever it can, and the reason needs no note.
    assert route(Routes(), "What colour?", can={"llava": LLAVA}) == Route("llava", "ask", "a short question (2 words)")
    with pytest.raises(LookupError, match="no served model can answer an open-ended request"):
        route(Routes(), "Why is it here?", can={"cap": CAPTIONER})


def test_routes_are_configurable() -> None:
    custom = Routes(precise="vqa", conversational="llava", long_answer_tokens=10, short_question_words=3, open_ended_words=("tell",))
    assert route(custom, "What colour?", max_tokens=11).reason == "a long answer (max_tokens 11 > 10)"
    assert route(custom, "What colour?", max_tokens=10).model == "vqa"
    assert route(custom, "What colour is it?").reason == "a long request (4 words)"
    assert route(custom, "Tell me").reason == "an open-ended request ('tell')"
    assert route(custom, "Why not?") == Route("vqa", "ask", "a short question (2 words)")  # 'why' is no longer open-ended
    assert Route("vqa", "ask", "x").to_dict() == {"model": "vqa", "task": "ask", "reason": "x"}


def test_a_model_that_takes_concurrent_calls_gets_them_at_once() -> None:
    """A model served from elsewhere (``concurrency`` > 1) has that many calls in flight together:
    three chats meet at a barrier that only three calls in flight at once can pass."""
    from vlmkit_server import create_api_app

    barrier = threading.Barrier(3, timeout=20)

    class Elsewhere:
        concurrency = 3
        kind = type("Kind", (), {"tasks": frozenset({"chat"}), "label": "remote"})()

        def chat(self, messages: list[dict[str, Any]], *, stream: bool = False, **options: Any) -> str:
            barrier.wait()  # raises BrokenBarrierError (a 500) unless 3 calls are here at once
            return "met"

    app = create_api_app({"far": Elsewhere()})
    with TestClient(app) as client, ThreadPoolExecutor(3) as pool:
        body = {"model": "far", "messages": [{"role": "user", "content": "hi"}]}
        replies = list(pool.map(lambda _: client.post("/v1/chat/completions", json=body), range(3)))
    assert [r.status_code for r in replies] == [200] * 3
    assert {r.json()["choices"][0]["message"]["content"] for r in replies} == {"met"}
