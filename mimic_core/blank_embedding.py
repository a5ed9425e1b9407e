"""The unconditional context: the projected CLIP embedding of the all-zero input.

Classifier-free guidance's unconditional rows take the image encoder's embedding of a blank
(all-zero) input, a function of the image encoder's and projection's weights alone. It costs a
whole image-encoder pass (about 2 s of an edit's fixed cost at the released size on a 2-core CPU).
A pipeline keeps it once computed (:meth:`~mimic_core.pipeline.MimicBrushPipeline.blank_embedding`),
and a converted checkpoint carries it (:data:`STORED_KEY`), computed at conversion from the very
weights the file holds, so that the first edit after loading runs the image encoder once, on the
reference. The stored embedding serves while the image encoder and projection are the tensors
loaded from that file, neither moved nor cast nor replaced (nor written in place, where the tensor has
a version counter to show it), under the image-encoder config stored with them
(:class:`StoredBlankEmbedding`); otherwise it is computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import ModelFileError
from .prepacked import tensor_state

DERIVED_PREFIX = "derived."
"""The converted checkpoint's prefix for values computed from its weights, outside the five parts'."""
STORED_KEY = DERIVED_PREFIX + "blank_embedding"
"""The converted checkpoint's key for the blank input's embedding."""


def compute_blank_embedding(image_encoder: nn.Module, projection: nn.Module) -> torch.Tensor:
    """The projected embedding ``[1, T, C]`` of the all-zero input (the penultimate hidden state,
    as for a reference), on the image encoder's device and in its dtype."""
    weight = next(image_encoder.parameters())
    side = image_encoder.config.image_size
    blank = torch.zeros(1, 3, side, side, device=weight.device, dtype=weight.dtype)
    hidden = image_encoder(blank, output_hidden_states=True).hidden_states[-2]
    return projection(hidden)


def weights_state(image_encoder: nn.Module, projection: nn.Module) -> tuple[tuple | None, ...]:
    """What identifies the weights the blank embedding comes from: each one's :func:`tensor_state`."""
    tensors = (*image_encoder.parameters(), *image_encoder.buffers(), *projection.parameters())
    return tuple(tensor_state(tensor) for tensor in tensors)


def expected_shape(image_encoder: nn.Module, projection: nn.Module) -> tuple[int, int, int]:
    """The blank embedding's shape for these networks, as every image embedding's but for its rows: one
    row of the encoder's tokens (its patches and the class token) at the projection's output width."""
    config = image_encoder.config
    return 1, (config.image_size // config.patch_size) ** 2 + 1, projection.projector.out_features


@dataclass(frozen=True, eq=False)
class StoredBlankEmbedding:
    """A converted checkpoint's blank embedding (a copy: a view would keep the whole file mapped) and
    the :func:`weights_state` of the networks loaded from the same file, taken as loaded: it serves
    while those weights are still those tensors."""

    embedding: torch.Tensor
    weights: tuple[tuple | None, ...]


def stored_blank_embedding(embedding: torch.Tensor | None, image_encoder: nn.Module, projection: nn.Module,
                           path: Path) -> StoredBlankEmbedding | None:
    """The blank embedding a converted file at ``path`` carries, for the networks just built from it (before
    any move or cast); None where it carries none. One of another shape or dtype is refused: the file was
    altered after its conversion, and an embedding that does not belong to its weights would steer every
    edit wrongly."""
    if embedding is None:
        return None
    expected = expected_shape(image_encoder, projection)
    dtype = next(projection.parameters()).dtype
    if tuple(embedding.shape) != expected or embedding.dtype != dtype:
        raise ModelFileError(
            f"'{path}' carries a blank-input embedding of shape {tuple(embedding.shape)} in {embedding.dtype} where "
            f"its image encoder gives {expected} in {dtype}: the file was changed after its conversion. Convert the "
            "authors' checkpoint again ('python -m mimic_core convert mimicbrush.bin mimicbrush.safetensors')."
        )
    return StoredBlankEmbedding(embedding.clone(), weights_state(image_encoder, projection))
