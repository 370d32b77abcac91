"""One string for any dataset (``"coco:ANNOTATIONS.json:IMAGE_DIR"``, ``"shapes:100"``, ...), for
command lines and configs: :func:`read_dataset` and the forms it accepts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal

from ...errors import InputError
from ..easy_vqa import load_easy_vqa
from ..records import Example
from ..shapes import make_scene, to_example
from .coco import read_coco_captions
from .folders import read_folder, read_image_classes
from .gqa import read_gqa
from .vqa import read_vqa
from .webdataset import read_webdataset


def _coco_spec(rest: str) -> Iterator[Example]:
    fields = rest.split(":")
    if len(fields) not in (2, 3):
        raise InputError(
            "expected 'coco:ANNOTATIONS.json:IMAGE_DIR' or 'coco:ANNOTATIONS.json:IMAGE_DIR:SPLIT[,SPLIT]'"
        )
    split = tuple(fields[2].split(",")) if len(fields) == 3 else None
    return read_coco_captions(fields[0], fields[1], split=split)


def _vqa_spec(rest: str) -> Iterator[Example]:
    fields = rest.split(":")
    if len(fields) != 3:
        raise InputError(
            "expected 'vqa:QUESTIONS.json:ANNOTATIONS.json:IMAGE_DIR' (ANNOTATIONS empty for test)"
        )
    return read_vqa(fields[0], fields[1] or None, fields[2])


def _gqa_spec(rest: str) -> Iterator[Example]:
    fields = rest.split(":")
    if len(fields) != 2 or not all(fields):
        raise InputError("expected 'gqa:QUESTIONS.json:IMAGE_DIR'")
    return read_gqa(fields[0], fields[1])


def _imagenet_spec(rest: str) -> Iterator[Example]:
    if not rest:
        raise InputError("expected 'imagenet:DIR'")
    return read_image_classes(rest)[1]


def _shapes_spec(rest: str) -> Iterator[Example]:
    fields = rest.split(":")
    if not fields[0].isdigit() or len(fields) > 3:
        raise InputError(f"expected 'shapes:N[:SPLIT[:SEED]]' with N a non-negative integer, not 'shapes:{rest}'")
    split = fields[1] if len(fields) > 1 else "train"
    if split not in ("train", "test"):
        raise InputError(f"shapes split must be 'train' or 'test', not {split!r}")
    if len(fields) > 2 and not fields[2].isdigit():
        raise InputError(f"shapes seed must be a non-negative integer, not {fields[2]!r}")
    n, seed = int(fields[0]), int(fields[2]) if len(fields) > 2 else 0
    # The same examples as make_split(n, seed, split), rendered one at a time.
    chosen: Literal["train", "test"] = "test" if split == "test" else "train"
    return (to_example(make_scene(i, seed, chosen)) for i in range(n))


def _shapes_web_spec(rest: str) -> Iterator[Example]:
    fields = rest.split(":")
    if not all(f.isdigit() for f in fields) or len(fields) > 2:
        raise InputError(f"expected 'shapes-web:N[:SEED]' with N and SEED non-negative integers, not 'shapes-web:{rest}'")
    from ..shapes import make_web_split

    return iter(make_web_split(int(fields[0]), int(fields[1]) if len(fields) > 1 else 0)[0])


def _shapes_domains_spec(rest: str) -> Iterator[Example]:
    fields = rest.split(":")
    if not fields[0] or len(fields) > 3 or not all(f.isdigit() for f in fields[1:]):
        raise InputError(
            "expected 'shapes-domains:DOMAIN[,DOMAIN...][:N_PER_CLASS[:SEED]]' with N_PER_CLASS and SEED "
            f"non-negative integers, not 'shapes-domains:{rest}'"
        )
    from ..domains import iter_domain_splits

    n = int(fields[1]) if len(fields) > 1 else 100
    return iter_domain_splits(fields[0].split(","), n, seed=int(fields[2]) if len(fields) > 2 else 0)


def _domains_spec(rest: str) -> Iterator[Example]:
    if not rest:
        raise InputError("expected 'domains:ROOT[:DOMAIN[,DOMAIN...]]'")
    from pathlib import Path

    from ..domains import read_domains

    # A root whose own name holds a colon is taken whole when it is a folder.
    root, colon, names = rest.rpartition(":")
    if not colon or Path(rest).is_dir():
        root, names = rest, ""
    per_domain = read_domains(root, names.split(",") if names else None)[1]
    return (e for examples in per_domain.values() for e in examples)


def _easy_vqa_spec(rest: str) -> Iterator[Example]:
    if rest not in ("train", "test"):
        raise InputError(f"expected 'easy-vqa:train' or 'easy-vqa:test', not 'easy-vqa:{rest}'")
    return iter(load_easy_vqa("train" if rest == "train" else "test"))


def _folder_spec(rest: str) -> Iterator[Example]:
    if not rest:
        raise InputError("expected 'folder:DIR'")
    return read_folder(rest)


def _wds_spec(rest: str) -> Iterator[Example]:
    if not rest:
        raise InputError("expected 'wds:PATTERN'")
    return read_webdataset(rest)


_SCHEMES: dict[str, tuple[str, Callable[[str], Iterator[Example]]]] = {
    "coco": ("coco:ANNOTATIONS.json:IMAGE_DIR[:SPLIT[,SPLIT]]", _coco_spec),
    "vqa": ("vqa:QUESTIONS.json:ANNOTATIONS.json:IMAGE_DIR", _vqa_spec),
    "gqa": ("gqa:QUESTIONS.json:IMAGE_DIR", _gqa_spec),
    "imagenet": ("imagenet:DIR", _imagenet_spec),
    "folder": ("folder:DIR", _folder_spec),
    "wds": ("wds:PATTERN", _wds_spec),
    "shapes": ("shapes:N[:SPLIT[:SEED]]", _shapes_spec),
    "shapes-web": ("shapes-web:N[:SEED]", _shapes_web_spec),
    "shapes-domains": ("shapes-domains:DOMAIN[,DOMAIN...][:N_PER_CLASS[:SEED]]", _shapes_domains_spec),
    "domains": ("domains:ROOT[:DOMAIN[,DOMAIN...]]", _domains_spec),
    "easy-vqa": ("easy-vqa:train|test", _easy_vqa_spec),
}


def dataset_schemes() -> list[str]:
    """The forms :func:`read_dataset` accepts, one per scheme."""
    return [usage for usage, _ in _SCHEMES.values()]


def read_dataset(spec: str) -> Iterator[Example]:
    """Examples from a one-string description (for command lines and configs); see ``dataset_schemes()``.

    ``"coco:..."`` reads COCO or Karpathy caption JSON (an optional fourth field keeps Karpathy splits,
    ``train,restval``), NoCaps and image-info files included; ``"vqa:..."`` VQAv2 or OK-VQA (leave
    ANNOTATIONS empty, ``vqa:Q.json::DIR``, for the test sets); ``"gqa:..."`` a GQA questions file;
    ``"imagenet:DIR"`` a folder of class folders (``read_image_classes``: ``label`` holds the class
    name; call that function for the class list); ``"folder:DIR"`` a folder with ``.txt`` captions; ``"wds:PATTERN"`` WebDataset shards;
    ``"shapes:N[:SPLIT[:SEED]]"`` the first N examples of the shapes world (as ``make_split(N, SEED, SPLIT)``,
    default train split, seed 0); ``"shapes-web:N[:SEED]"`` N training scenes as a noisy web crawl, one text
    each and about half of them wrong (``make_web_split``, for CapFilt);
    ``"shapes-domains:DOMAIN[,DOMAIN...][:N_PER_CLASS[:SEED]]"`` the generated cross-domain shapes, one
    object an image in the named styles (photo, cartoon, sketch, painting), domain by domain, each as
    ``make_domain_split(DOMAIN, N_PER_CLASS, seed=SEED)`` (default 100 per class, seed 0);
    ``"domains:ROOT[:DOMAIN[,DOMAIN...]]"`` a PACS / Office-Home / DomainNet / VLCS-style folder
    ``ROOT/<domain>/<class>/<images>``, the named domains (default all) one after another
    (``read_domains``: ``label`` is the class folder's name);
    ``"easy-vqa:train"`` or ``"easy-vqa:test"`` the easy-VQA package.
    """
    if not isinstance(spec, str):
        raise InputError(f"dataset spec must be a string, not {type(spec).__name__}")
    scheme, colon, rest = spec.partition(":")
    if not colon or scheme not in _SCHEMES:
        raise InputError(f"unknown dataset spec {spec!r}; expected one of: {', '.join(dataset_schemes())}")
    return _SCHEMES[scheme][1](rest)
