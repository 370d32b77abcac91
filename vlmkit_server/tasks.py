"""The task endpoints: ``/v1/embeddings`` (OpenAI's shape; texts, and images as image parts) and
vlmkit's own ``/v1/caption``, ``/v1/vqa``, ``/v1/classify``, ``/v1/match`` and ``/v1/interrogate``,
each over one image (a ``data:`` URL, or ``{"url": ...}``)."""

from __future__ import annotations

import base64
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from .config import MAX_EMBED_INPUTS, MAX_TEXT_CHARS
from .errors import BadRequest, TooLarge
from .schemas import (
    CaptionRequest,
    ClassifyRequest,
    Embedding,
    EmbeddingList,
    EmbeddingsRequest,
    InterrogateRequest,
    MatchRequest,
    VqaRequest,
    json_body,
)
from .served import Server, generation_options, server_of

__all__ = ["router"]

router = APIRouter()
ServerDep = Annotated[Server, Depends(server_of)]


def _text(value: str, what: str) -> str:
    if len(value) > MAX_TEXT_CHARS:
        raise TooLarge(f"{what} is longer than {MAX_TEXT_CHARS:,} characters")
    return value


def _max_tokens(value: float | None, default: int, server: Server) -> int:
    if value is not None and value > server.config.max_tokens:
        raise BadRequest(f"'max_tokens' must be between 1 and {server.config.max_tokens}, got {value:g}")
    return int(value) if value is not None else default


def _embedding_input(item: Any, i: int, server: Server) -> Any:
    """One input to embed: a text, or an image part's image."""
    if isinstance(item, str):
        return _text(item, f"input[{i}]")
    if isinstance(item, dict) and item.get("type") == "image_url":
        return server.images(item.get("image_url"), f"input[{i}]")
    raise BadRequest(f"input[{i}] must be a string or {{'type': 'image_url', 'image_url': {{'url': ...}}}}")


@router.post("/v1/embeddings")
async def embeddings(body: Annotated[EmbeddingsRequest, json_body(EmbeddingsRequest)], server: ServerDep) -> JSONResponse:
    entry = server.model_named(body.model)
    entry.require("embed")
    if len(body.items) > MAX_EMBED_INPUTS:
        raise TooLarge(f"at most {MAX_EMBED_INPUTS} inputs per request")
    inputs = [_embedding_input(item, i, server) for i, item in enumerate(body.items)]
    tokens = sum(entry.tokens(x) for x in inputs if isinstance(x, str))
    vectors = await entry.embed(inputs, step=min(server.config.max_batch, server.config.max_queue))
    data = []
    for i, vector in enumerate(vectors):
        array = np.asarray(vector, dtype=np.float32)
        encoded = base64.b64encode(array.astype("<f4").tobytes()).decode() if body.encoding_format == "base64" else array.tolist()
        data.append(Embedding(index=i, embedding=encoded))
    return JSONResponse(EmbeddingList(data=data, model=entry.name, usage={"prompt_tokens": tokens, "total_tokens": tokens}).model_dump())


@router.post("/v1/caption")
async def caption(body: Annotated[CaptionRequest, json_body(CaptionRequest)], server: ServerDep) -> dict[str, Any]:
    entry = server.model_named(body.model)
    options = generation_options(_max_tokens(body.max_tokens, 30, server))
    image = server.images(body.image)
    return {"model": entry.name, "caption": await entry.caption(image, body.prompt, options)}


@router.post("/v1/vqa")
async def vqa(body: Annotated[VqaRequest, json_body(VqaRequest)], server: ServerDep) -> dict[str, Any]:
    entry = server.model_named(body.model)
    question = _text(body.question, "question")
    options = generation_options(_max_tokens(body.max_tokens, 10, server))
    image = server.images(body.image)
    return {"model": entry.name, "question": question, "answer": await entry.ask(image, question, options)}


@router.post("/v1/classify")
async def classify(body: Annotated[ClassifyRequest, json_body(ClassifyRequest)], server: ServerDep) -> dict[str, Any]:
    entry = server.model_named(body.model)
    entry.require("classify")
    image = server.images(body.image)
    ranked = await entry.classify(image, body.labels, body.k)
    return {"model": entry.name, "labels": [{"label": r.label, "score": r.score} for r in ranked]}


@router.post("/v1/match")
async def match(body: Annotated[MatchRequest, json_body(MatchRequest)], server: ServerDep) -> dict[str, Any]:
    entry = server.model_named(body.model)
    entry.require("match")
    image = server.images(body.image)
    result = await entry.match(image, body.texts)
    return {"model": entry.name, "kind": result.kind, "scores": [float(s) for s in result.scores]}


@router.post("/v1/interrogate")
async def interrogate(body: Annotated[InterrogateRequest, json_body(InterrogateRequest)], server: ServerDep) -> dict[str, Any]:
    """An image -> a prompt for text-to-image models: a caption and the terms that fit it best."""
    captioner = server.model_named(body.model)
    ranker = server.model_named(body.ranker or captioner.name)
    image = server.images(body.image)
    top_k = int(body.top_k) if body.top_k is not None else 3
    result = await server.interrogate(captioner, ranker, image, body.mode or "fast", top_k)
    return {"model": captioner.name, "ranker": ranker.name, "mode": result.mode, "prompt": result.prompt,
            "caption": result.caption, "similarity": result.similarity,
            "terms": {k: [{"term": t, "score": v} for t, v in terms] for k, terms in result.terms.items()}}
