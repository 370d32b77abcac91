"""The LLaVA training objective: the next-token loss on labelled tokens of a
``LlavaForConditionalGeneration`` (:mod:`vlmkit.models.llava_build`), fed frozen-tower hidden states
instead of pixels, so that a recipe can cache the tower's features. Labels come from
:func:`vlmkit.data.conversation_encoding.encode_conversation`; the loss equals the model's own on
pixels (a test checks it).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["LlavaObjective"]


class LlavaObjective(nn.Module):
    """The LLaVA model with the next-token loss on labelled tokens as its forward (one module call
    for DDP): frozen-tower hidden states -> projector -> image-token positions of the embeddings."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor, image_states: torch.Tensor
    ) -> torch.Tensor:
        config = self.model.config
        if config.vision_feature_select_strategy == "default":
            image_states = image_states[:, 1:]  # (N, T, E): CLS dropped
        image_embeds = self.model.model.multi_modal_projector(image_states)  # (N, T, D)
        embeds = self.model.get_input_embeddings()(input_ids)  # (B, L, D)
        mask = (input_ids == config.image_token_index).unsqueeze(-1)  # (B, L, 1)
        embeds = embeds.masked_scatter(mask, image_embeds.to(embeds.dtype))
        return self.model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels).loss
