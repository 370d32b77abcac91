"""Shared plumbing for the families backed by transformers model classes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from threading import Thread
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from .base import GenerationOptions, PromptedTasks, VisionLanguageModel
from .kinds import ModelKind

__all__ = ["HFModel", "features", "normalise", "image_size_of", "equal_length_groups"]


def features(output: Any) -> torch.Tensor:
    """``get_*_features`` return a tensor in transformers 4 and an output object in 5."""
    if isinstance(output, torch.Tensor):
        return output
    return output.pooler_output


def normalise(x: torch.Tensor) -> np.ndarray:
    x = x.float()
    return (x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)).cpu().numpy().astype(np.float32)


def image_size_of(image_processor: Any) -> int | None:
    """The side length an image processor resizes to (else its crop size): JPEGs may decode at a
    reduced scale as long as both sides stay at least this large."""
    for attr in ("size", "crop_size"):
        size = getattr(image_processor, attr, None)
        if isinstance(size, int):
            return size
        if size is None:
            continue
        for key in ("height", "shortest_edge"):
            # A dict in transformers 4, a SizeDict object in 5.
            value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
            if value:
                return int(value)
    return None


class HFModel(VisionLanguageModel):
    """A transformers model and its processor, with device/dtype handling and generation helpers."""

    def __init__(
        self,
        name: str,
        kind: ModelKind,
        model: torch.nn.Module,
        processor: Any,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        super().__init__(name, kind, device, dtype)
        self.model: Any = model.eval()  # a transformers model; typed loosely as its heads differ
        self.processor = processor
        image_processor = getattr(processor, "image_processor", None)
        self.image_size = image_size_of(image_processor) if image_processor is not None else None

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def _to_device(self, inputs: Any) -> dict[str, Any]:
        """Move a processor's output to the model's device; floating tensors take the model dtype."""
        moved = {}
        for key, value in dict(inputs).items():
            if isinstance(value, torch.Tensor):
                value = value.to(self.device)
                if value.is_floating_point():
                    value = value.to(self.dtype)
            moved[key] = value
        return moved

    def _pixel_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """Per-image preprocessing run on the decode threads: PIL image -> (3, H, W) tensor."""
        image_processor = self.processor.image_processor

        def transform(image: Image.Image) -> torch.Tensor:
            return image_processor(images=[image], return_tensors="pt")["pixel_values"][0]

        return transform

    def _pixel_batches(self, images: list[Any], batch_size: int) -> Iterator[torch.Tensor]:
        for batch in self._load_batches(images, batch_size, transform=self._pixel_transform()):
            yield torch.stack(batch).to(self.device, self.dtype)

    def _decode(self, sequences: torch.Tensor, prompt_length: int = 0) -> list[str]:
        """Decode generated ids, dropping the first ``prompt_length`` positions (the echoed prompt)."""
        new = sequences[:, prompt_length:]
        return [text.strip() for text in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def _stream(self, generate_kwargs: dict[str, Any]) -> Iterator[str]:
        """Run ``model.generate`` on a thread and yield text pieces as tokens arrive."""
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(**generate_kwargs, streamer=streamer)
            except BaseException as exc:  # surfaced in the consumer's thread below
                errors.append(exc)
                streamer.end()

        thread = Thread(target=run, daemon=True, name="vlmkit-generate")
        thread.start()
        for piece in streamer:
            if piece:
                yield piece
        thread.join()
        if errors:
            raise errors[0]


def equal_length_groups(keys: list[Any], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of at most ``batch_size`` whose keys (token lengths) agree, so
    that no batch needs padding; in order of key, then of index."""
    order = sorted(range(len(keys)), key=lambda i: (keys[i], i))
    groups: list[list[int]] = []
    for i in order:
        if groups and keys[groups[-1][0]] == keys[i] and len(groups[-1]) < batch_size:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def strip_prompt(sequences: torch.Tensor, input_ids: torch.Tensor | None) -> torch.Tensor:
    """Drop the echoed prompt when ``generate`` returns it in front of the new tokens."""
    if input_ids is None or sequences.shape[1] < input_ids.shape[1]:
        return sequences
    length = input_ids.shape[1]
    if torch.equal(sequences[:, :length].cpu(), input_ids.cpu()):
        return sequences[:, length:]
    return sequences


class PromptedGenerator(HFModel, PromptedTasks):
    """:class:`PromptedTasks` for models whose processor takes an image and a text prompt together
    (BLIP-2, InstructBLIP, LLaVA); families differ in their prompts and ``_prepare_prompts``."""

    def _prepare_prompts(self, prompts: list[str]) -> list[str]:
        return prompts

    def _length_key(self, prompt: str) -> tuple[int, ...]:
        """Token lengths that must agree for two prompts to share a batch without padding."""
        return (len(self.tokenizer(prompt)["input_ids"]),)

    def _generate(self, image_list: list[Any], prompts: list[str], options: GenerationOptions, batch_size: int) -> list[str]:
        """Generate for (image, prompt) pairs, batching only prompts of equal token length.

        Padding changes what some models generate (position ids under left padding are not
        handled alike across transformers' LMs), so batches never hold padding: the results are
        the same at every batch size, and equal to generating one pair at a time.
        """
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        full = self._prepare_prompts(prompts)
        texts: list[str] = [""] * len(full)
        for group in equal_length_groups([self._length_key(p) for p in full], batch_size):
            batch = self._load_all([image_list[i] for i in group])
            inputs = self.processor(images=batch, text=[full[i] for i in group], padding=True, return_tensors="pt")
            inputs = self._to_device(inputs)
            with torch.inference_mode():
                out = self.model.generate(**inputs, **options.to_hf())
            for i, text in zip(group, self._decode(strip_prompt(out, inputs.get("input_ids"))), strict=True):
                texts[i] = text
        return texts
