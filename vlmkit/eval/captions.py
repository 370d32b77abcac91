"""Captioning metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE) as the COCO caption evaluation computes them.

The scorers are pycocoevalcap's (``pip install 'vlmkit[eval]'``), fed the way its ``COCOEvalCap``
feeds them, so the numbers are the ones papers report, on the 0-100 scale they use (CIDEr 121.6,
not 1.216). What Java each metric needs, and what happens without it:

- **Tokenization.** The COCO evaluation lower-cases and splits every caption with Stanford's
  PTBTokenizer (a Java program shipped inside pycocoevalcap), then drops the punctuation tokens
  ``' '' ` `` . , ? ! : ; - -- ...``. Without Java a simple tokenizer stands in
  (``CaptionScores.tokenizer == "simple"``): lower case; split on white space and punctuation,
  keeping hyphenated words, numbers like ``3.5`` and ``10:30`` and abbreviations like ``a.m.``
  whole; split clitics as PTB does (``is n't``, ``dog 's``); drop the same punctuation; write
  brackets as PTB does (``-lrb-``: pycocoevalcap drops ``-LRB-`` but asks for lower case, so
  brackets survive). On ordinary captions it gives PTB's tokens; on unusual punctuation the
  scores can differ slightly from the published protocol.
- **BLEU, ROUGE-L, CIDEr** are pure Python. BLEU is corpus BLEU (clipped n-gram counts and
  lengths summed over all images, the closest reference length for the brevity penalty), so it is
  not the mean of the per-image values; both carry pycocoevalcap's 1e-9 smoothing, which puts a
  perfect match at 99.9999999 rather than 100. CIDEr is pycocoevalcap's ``Cider`` (CIDEr-D: clipped,
  with the length penalty) and takes its IDF weights from the references of the evaluated set, so
  an image's CIDEr depends on the other images; with a single image every weight is zero and CIDEr
  is reported unavailable rather than as a meaningless 0.
- **METEOR** needs Java: meteor-1.5.jar with ``-Xmx2G``, about 5 s to load its paraphrase table
  (started before tokenizing, so the wait overlaps the other metrics). The corpus score comes from
  the summed statistics, not the mean of the per-image values.
- **SPICE** needs Java, ``-Xmx8G`` of heap, and the Stanford CoreNLP 3.6.0 jars
  (``stanford-corenlp-3.6.0.jar`` and ``stanford-corenlp-3.6.0-models.jar``) in
  ``pycocoevalcap/spice/lib``, which pycocoevalcap downloads (the whole CoreNLP release) the first
  time it builds its ``Spice`` scorer. Here nothing is downloaded: when they are missing SPICE is
  reported unavailable with the command that fetches them. SPICE 1.0 was built for Java 8; it runs
  here without its parse cache (where reports of failures on newer JREs point), so it re-parses
  the references on every call. The scores do not depend on the cache.

A metric that cannot run (no Java, no jars, a Java process that fails) is left out of ``scores``
and named in ``CaptionScores.unavailable`` with the reason; the others are still computed. Each
call starts its own Java processes, so concurrent calls from several threads are safe.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import numpy as np

from ..errors import InputError, VlmkitError

__all__ = ["CAPTION_METRICS", "CaptionScores", "caption_scores", "java_available"]

CAPTION_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")
_BLEU = CAPTION_METRICS[:4]
_NEEDS_JAVA = "needs Java: install a JRE (Debian: apt-get install default-jre-headless) or set JAVA_HOME"
_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
_GET_CORENLP = (
    'python -c "from pycocoevalcap.spice.get_stanford_models import get_stanford_models; '
    'get_stanford_models()"'
)


@dataclass(frozen=True)
class CaptionScores:
    scores: dict[str, float]  # metric -> corpus score, 0-100
    per_image: dict[str, dict[str, float]]  # image id -> metric -> score, 0-100
    unavailable: dict[str, str]  # metric -> why it was not computed
    tokenizer: str  # "ptb" (PTBTokenizer, as the COCO evaluation) or "simple" (no Java)


def java_available() -> str | None:
    """The java executable that runs: ``$JAVA_HOME/bin/java`` when set and working, else ``java`` on PATH.

    The executable is run once (``java -version``): macOS puts a ``java`` on PATH that only says no
    runtime is installed.
    """
    candidates = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / ("java.exe" if os.name == "nt" else "java")))
    on_path = shutil.which("java")
    if on_path:
        candidates.append(on_path)
    for java in candidates:
        try:
            stamp = os.stat(java).st_mtime_ns
        except OSError:
            continue
        if _java_runs(java, stamp):
            return java
    return None


@functools.lru_cache(maxsize=16)
def _java_runs(java: str, stamp: int) -> bool:  # stamp: the file's mtime, so a reinstall is seen
    try:
        return subprocess.run([java, "-version"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def caption_scores(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    *,
    metrics: Sequence[str] | None = None,
) -> CaptionScores:
    """Score one predicted caption per image against that image's reference captions.

    ``predictions`` and ``references`` are keyed by the same image ids. ``metrics`` picks from
    :data:`CAPTION_METRICS` (all by default). See the module docstring for the Java each metric
    needs; a metric that cannot run is reported in ``unavailable``, never raised.
    """
    ids = _check_captions(predictions, references)
    wanted = _check_metrics(metrics)
    _coco("bleu.bleu")  # the friendly message when pycocoevalcap is missing, before any Java starts
    java = java_available()
    unavailable: dict[str, str] = {}
    meteor: _Meteor | None = None
    if "METEOR" in wanted:
        if java is None:
            unavailable["METEOR"] = f"METEOR {_NEEDS_JAVA}"
        else:
            try:  # Load the paraphrase table while the rest is tokenized and scored.
                meteor = _Meteor(java)
            except _JavaError as error:
                unavailable["METEOR"] = f"METEOR failed: {error}"
    try:
        gts, res, tokenizer = _tokenize(java, ids, predictions, references)
        scores: dict[str, float] = {}
        per_image: dict[str, dict[str, float]] = {i: {} for i in ids}

        def record(name: str, score: float, image_scores: Sequence[float]) -> None:
            scores[name] = 100.0 * float(score)
            for i, value in zip(ids, image_scores, strict=True):
                per_image[i][name] = 100.0 * float(value)

        if any(name in wanted for name in _BLEU):
            bleu, bleu_images = _coco("bleu.bleu").Bleu(4).compute_score(gts, res, verbose=0)
            for n, name in enumerate(_BLEU):
                if name in wanted:
                    record(name, bleu[n], bleu_images[n])
        if "ROUGE-L" in wanted:
            record("ROUGE-L", *_coco("rouge.rouge").Rouge().compute_score(gts, res))
        if "CIDEr" in wanted:
            if len(ids) < 2:
                unavailable["CIDEr"] = (
                    "CIDEr needs at least 2 images: its IDF weights come from the evaluated set's "
                    "references and are all zero for one image"
                )
            else:
                record("CIDEr", *_coco("cider.cider").Cider().compute_score(gts, res))
        if meteor is not None:  # last of the quick ones: its JVM has had the longest to load
            try:
                record("METEOR", *meteor.score(ids, gts, res))
            except _JavaError as error:
                unavailable["METEOR"] = f"METEOR failed: {error}"
        if "SPICE" in wanted:
            reason = _spice_missing(java)
            if reason:
                unavailable["SPICE"] = reason
            else:
                assert java is not None  # _spice_missing says so otherwise
                try:
                    record("SPICE", *_spice(java, ids, gts, res))
                except _JavaError as error:
                    unavailable["SPICE"] = f"SPICE failed: {error}"
    finally:
        if meteor is not None:
            meteor.close()
    order = {name: k for k, name in enumerate(CAPTION_METRICS)}
    return CaptionScores(
        scores=dict(sorted(scores.items(), key=lambda item: order[item[0]])),
        per_image={i: dict(sorted(m.items(), key=lambda item: order[item[0]])) for i, m in per_image.items()},
        unavailable=dict(sorted(unavailable.items(), key=lambda item: order[item[0]])),
        tokenizer=tokenizer,
    )


# ---------------------------------------------------------------------------------------------
# Input checks


def _some(ids: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _check_captions(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> list[str]:
    if not isinstance(predictions, Mapping) or not isinstance(references, Mapping):
        raise InputError(
            "predictions and references must be mappings from image id to caption(s); got "
            f"{type(predictions).__name__} and {type(references).__name__}"
        )
    if not predictions and not references:
        raise InputError("no captions to score: predictions and references are empty")
    for ids, what in ((predictions, "predictions"), (references, "references")):
        for i in ids:
            if not isinstance(i, str):
                raise InputError(
                    f"image ids must be str; {what} has {type(i).__name__} id {i!r} (convert with str())"
                )
    no_refs = [i for i in predictions if i not in references]
    no_pred = [i for i in references if i not in predictions]
    if no_refs or no_pred:
        problems = []
        if no_refs:
            problems.append(f"{len(no_refs)} predicted image(s) have no references ({_some(no_refs)})")
        if no_pred:
            problems.append(f"{len(no_pred)} referenced image(s) have no prediction ({_some(no_pred)})")
        raise InputError("predictions and references must have the same image ids: " + "; ".join(problems))
    for i, caption in predictions.items():
        if not isinstance(caption, str):
            raise InputError(f"the prediction for image {i!r} must be one str, got {type(caption).__name__}")
    for i, refs in references.items():
        if isinstance(refs, str) or not isinstance(refs, Sequence):
            raise InputError(
                f"the references for image {i!r} must be a list of str, got {type(refs).__name__}"
                + (" (wrap a single caption in a list)" if isinstance(refs, str) else "")
            )
        if not refs:
            raise InputError(f"image {i!r} has no reference captions")
        for ref in refs:
            if not isinstance(ref, str):
                raise InputError(f"the references for image {i!r} must be str, got {type(ref).__name__}")
    return list(predictions)


def _check_metrics(metrics: Sequence[str] | None) -> set[str]:
    if metrics is None:
        return set(CAPTION_METRICS)
    if isinstance(metrics, str) or not isinstance(metrics, Sequence):
        raise InputError(f"metrics must be a list of names from {', '.join(CAPTION_METRICS)}, got {metrics!r}")
    if not metrics:
        raise InputError(f"no metrics asked for; choose from {', '.join(CAPTION_METRICS)}")
    unknown = [m for m in metrics if m not in CAPTION_METRICS]
    if unknown:
        raise InputError(f"unknown metric(s) {_some(unknown)}; choose from {', '.join(CAPTION_METRICS)}")
    return set(metrics)


# ---------------------------------------------------------------------------------------------
# pycocoevalcap and its Java programs


class _JavaError(Exception):
    """A Java program of pycocoevalcap could not start or failed; the message is one line."""


def _coco(name: str) -> ModuleType:
    """A pycocoevalcap module, imported on first use."""
    try:
        return importlib.import_module(f"pycocoevalcap.{name}")
    except ImportError:
        raise VlmkitError("captioning metrics need pycocoevalcap: pip install 'vlmkit[eval]'") from None


def _module_dir(name: str) -> Path:
    return Path(str(_coco(name).__file__)).parent


def _last_line(text: bytes | str, limit: int = 300) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[-1] if lines else "no message"
    return line if len(line) <= limit else line[: limit - 3] + "..."


# PTBTokenizer reads one caption per line and also ends a line at these; pycocoevalcap only
# replaces "\n", so a caption holding "\r" shifts every later caption onto the wrong image.
_LINE_BREAKS = re.compile("[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]")


def _tokenize(
    java: str | None, ids: list[str], predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]
) -> tuple[dict[str, list[str]], dict[str, list[str]], str]:
    """(gts, res, tokenizer): tokenized references and predictions keyed by id, as the scorers take them."""
    texts = [ref for i in ids for ref in references[i]] + [predictions[i] for i in ids]
    tokenized: list[str] | None = None
    if java is not None:
        try:
            tokenized = _ptb_tokenize(java, texts)
        except _JavaError as error:
            warnings.warn(f"PTBTokenizer failed ({error}); using the simple tokenizer", stacklevel=3)
    tokenizer = "ptb" if tokenized is not None else "simple"
    if tokenized is None:
        tokenized = [_simple_tokenize(text) for text in texts]
    gts: dict[str, list[str]] = {}
    at = 0
    for i in ids:
        gts[i] = tokenized[at : at + len(references[i])]
        at += len(references[i])
    res = {i: [tokenized[at + k]] for k, i in enumerate(ids)}
    return gts, res, tokenizer


def _ptb_tokenize(java: str, texts: list[str]) -> list[str]:
    """PTBTokenizer as pycocoevalcap runs it (lower case, line by line, then punctuation dropped)."""
    ptb = _coco("tokenizer.ptbtokenizer")
    jar = _module_dir("tokenizer.ptbtokenizer") / ptb.STANFORD_CORENLP_3_4_1_JAR
    drop = set(ptb.PUNCTUATIONS)
    with tempfile.TemporaryDirectory(prefix="vlmkit-ptb-") as tmp:
        source = Path(tmp) / "captions.txt"
        source.write_text("".join(_LINE_BREAKS.sub(" ", t) + "\n" for t in texts), encoding="utf-8")
        command = [java, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"]
        try:
            done = subprocess.run([*command, str(source)], capture_output=True)
        except OSError as error:
            raise _JavaError(f"could not run {java}: {error}") from None
    if done.returncode != 0:
        raise _JavaError(f"java exited with code {done.returncode}: {_last_line(done.stderr)}")
    lines = done.stdout.decode("utf-8").split("\n")
    if len(lines) != len(texts) + 1:  # one line per caption, and the final newline
        raise _JavaError(f"PTBTokenizer returned {len(lines) - 1} lines for {len(texts)} captions")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in drop) for line in lines[:-1]]


# The simple tokenizer (no Java): see the module docstring.
_CLITIC = re.compile(r"(?<=\w)(n't|'(?:s|re|ve|ll|d|m))\b")
_TOKEN = re.compile(
    r"n't|'(?:s|re|ve|ll|d|m)\b"  # clitics, split off beforehand
    r"|(?:[#@](?=[^\W\d_]))?\w+(?:[-./:']\w+)*(?:(?<=[^\W\d_]\.[^\W\d_])\.)?"  # words, 3.5, 10:30, black-and-white, a.m., #tag
    r"|\.\.\.|--|\S"  # punctuation, one mark at a time
)
_DROPPED = frozenset({"''", "'", "``", "`", '"', ".", "?", "!", ",", ":", ";", "-", "--", "...", "\u2026",
                      "\u201c", "\u201d", "\u2018", "\u2019"})
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}


def _simple_tokenize(text: str) -> str:
    """Lower-cased, space-separated tokens without punctuation: PTBTokenizer's output on ordinary captions."""
    tokens = _TOKEN.findall(_CLITIC.sub(r" \1", text.lower()))
    return " ".join(_BRACKETS.get(t, t) for t in tokens if t not in _DROPPED)


class _Meteor:
    """METEOR 1.5 over its ``-stdio`` protocol, with pycocoevalcap's command line; one JVM per call.

    pycocoevalcap's own wrapper starts ``java`` from PATH and, when the JVM dies mid-call, keeps its
    lock, so its destructor then blocks forever; this one reports the failure instead.
    """

    def __init__(self, java: str) -> None:
        jar_dir = _module_dir("meteor.meteor")
        command = [java, "-jar", "-Xmx2G", _coco("meteor.meteor").METEOR_JAR, "-", "-", "-stdio", "-l", "en", "-norm"]
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # a file, not a pipe: a full pipe would block it
        try:
            self._process = subprocess.Popen(
                command, cwd=jar_dir, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr
            )
        except OSError as error:
            self._stderr.close()
            raise _JavaError(f"could not run {java}: {error}") from None

    def score(self, ids: list[str], gts: dict[str, list[str]], res: dict[str, list[str]]) -> tuple[float, list[float]]:
        stats = []
        for i in ids:
            # "|||" separates fields; pycocoevalcap strips it (and the double space left) from the hypothesis.
            hypothesis = res[i][0].replace("|||", "").replace("  ", " ")
            refs = [ref.replace("|||", "") for ref in gts[i]]
            stats.append(self._ask(" ||| ".join(["SCORE", *refs, hypothesis])))
        self._send(" ||| ".join(["EVAL", *stats]))
        per_image = [self._number(self._read()) for _ in ids]
        return self._number(self._read()), per_image

    def _send(self, line: str) -> None:
        assert self._process.stdin is not None
        try:
            self._process.stdin.write(line.encode("utf-8") + b"\n")
            self._process.stdin.flush()
        except OSError:
            raise _JavaError(self._failure()) from None

    def _read(self) -> str:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise _JavaError(self._failure())
        return line.decode("utf-8").strip()

    def _ask(self, line: str) -> str:
        self._send(line)
        return self._read()

    def _number(self, text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise _JavaError(f"unexpected METEOR output {text[:80]!r}") from None

    def _failure(self) -> str:
        try:
            code = self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        self._stderr.seek(0)
        message = _last_line(self._stderr.read())
        return f"java exited with code {code}: {message}" if code is not None else message

    def close(self) -> None:
        if self._process.stdin is not None:
            try:
                self._process.stdin.close()
            except OSError:
                pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._stderr.close()


def _spice_lib_dir() -> Path:
    return _module_dir("spice.spice") / "lib"


def _spice_missing(java: str | None) -> str | None:
    """Why SPICE cannot run here, or None. Never builds pycocoevalcap's ``Spice``: that downloads."""
    if java is None:
        return f"SPICE {_NEEDS_JAVA}"
    lib = _spice_lib_dir()
    missing = [jar for jar in _CORENLP_JARS if not (lib / jar).is_file()]
    if missing:
        return (
            f"SPICE needs the Stanford CoreNLP 3.6.0 jars ({', '.join(missing)}) in {lib}; fetch them "
            f"on a machine with network: {_GET_CORENLP}"
        )
    return None


def _spice(java: str, ids: list[str], gts: dict[str, list[str]], res: dict[str, list[str]]) -> tuple[float, list[float]]:
    """SPICE's "All" F-score per image and its mean, as pycocoevalcap's ``Spice.compute_score``."""
    spice_dir = _module_dir("spice.spice")
    jar = _coco("spice.spice").SPICE_JAR
    with tempfile.TemporaryDirectory(prefix="vlmkit-spice-") as tmp:
        source, out = Path(tmp) / "input.json", Path(tmp) / "output.json"
        source.write_text(json.dumps([{"image_id": i, "test": res[i][0], "refs": gts[i]} for i in ids]))
        command = [java, "-jar", "-Xmx8G", jar, str(source), "-out", str(out), "-subset", "-silent"]
        try:
            done = subprocess.run(command, cwd=spice_dir, capture_output=True)
        except OSError as error:
            raise _JavaError(f"could not run {java}: {error}") from None
        if done.returncode != 0:
            raise _JavaError(f"java exited with code {done.returncode}: {_last_line(done.stderr)}")
        try:
            results: list[dict[str, Any]] = json.loads(out.read_text())
        except (OSError, ValueError) as error:
            raise _JavaError(f"no SPICE output: {error}") from None
    f_scores = [_float_or_nan(item["scores"]["All"]["f"]) for item in results]
    by_id = {str(item["image_id"]): f for item, f in zip(results, f_scores, strict=True)}
    return float(np.mean(f_scores)), [by_id[i] for i in ids]


def _float_or_nan(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
