"""The interface every SAM backend implements, and the metadata it registers with.

A backend owns its preprocessing, its (usually frozen) image encoder, its prompt encoder and mask
decoder, and its postprocessing. The text enters as extra sparse prompt tokens; nothing outside
`evf.sam_backends` knows which backend is in use.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from evf.checkpoint import CheckpointError, CheckpointFormat, load_checkpoint, load_strict, read_state_dict
from evf.preprocessing import ImageSpec
from evf.registry import Registry

# Image features as a dict of tensors whose dim 0 is the image: SAM has one level, SAM-2 three.
ImageFeatures = dict[str, torch.Tensor]


@dataclass(frozen=True)
class BackendInfo:
    """What the data side needs without building weights.

    Attributes:
        family: ``sam``, ``sam2`` or ``efficient_sam``.
        image: preprocessing of the image encoder's input.
        prompt_dim: width of one sparse prompt token (the projector's output width).
    """

    family: str
    image: ImageSpec
    prompt_dim: int


@dataclass
class PointPrompts:
    """Optional point prompts, one row per expression, in the backend's input frame (after resize).

    ``coords`` is ``[N,K,2]`` (x, y); ``labels`` is ``[N,K]`` with 1 = foreground, 0 = background,
    -1 = padding (an absent point).
    """

    coords: torch.Tensor
    labels: torch.Tensor


@dataclass
class DecoderOutput:
    logits: torch.Tensor  # [N,1,h,w] low-resolution mask logits
    iou: torch.Tensor  # [N,1] predicted IoU of the returned mask


class AbsentImageEncoder(nn.Module):
    """Stands in for an image encoder that was not built (``image_encoder=False``: features come from
    an embedding cache). It has no parameters; calling it raises.

    Attributes:
        weights_hash: `state_hash` of the image-encoder tensors of the backend checkpoint, taken while
            loading it (None without a checkpoint: the weights are then unknown).
    """

    def __init__(self) -> None:
        super().__init__()
        self.weights_hash: str | None = None

    def forward(self, pixels: torch.Tensor) -> ImageFeatures:
        raise RuntimeError(
            "this SAM backend was built without its image encoder (image_encoder=False, embedding-cache "
            "mode): pass precomputed image_features, or build it with image_encoder=True"
        )


def state_hash(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors: names (sorted), shapes and values, floats as float32.

    Floats are hashed as float32 so the same weights hash alike whether read from a file or from a
    built module (a checkpoint stored in fp16 loads into fp32 parameters).
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach()
        if tensor.is_floating_point():
            tensor = tensor.float()
        tensor = tensor.cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{str(tensor.dtype)}|{list(state[name].shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load_backend_checkpoint(module: nn.Module, path: str | Path, fmt: CheckpointFormat) -> None:
    """`load_checkpoint` for a backend's inner module, whose image encoder is ``module.image_encoder``.

    When that is an `AbsentImageEncoder`, the checkpoint's ``image_encoder.*`` tensors are hashed into
    its ``weights_hash`` instead of being loaded (the embedding cache checks its features against it);
    everything else loads strictly as usual.
    """
    absent = getattr(module, "image_encoder", None)
    if not isinstance(absent, AbsentImageEncoder):
        load_checkpoint(module, path, fmt)
        return
    prefix = "image_encoder."
    state = fmt.remap(read_state_dict(path, fmt.containers), source=str(path))
    encoder_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not encoder_state:
        raise CheckpointError(f"{path} (format {fmt.name!r}): no image encoder tensors ({prefix}*)")
    absent.weights_hash = state_hash(encoder_state)
    rest = {k: v for k, v in state.items() if not k.startswith(prefix)}
    load_strict(module, rest, fmt, source=str(path))


class SamBackend(nn.Module, ABC):
    """Image encoder + prompt encoder + mask decoder of one SAM family.

    A backend built with ``image_encoder=False`` (every registered factory takes it) holds an
    `AbsentImageEncoder`: it decodes precomputed features only, e.g. from an embedding cache.
    """

    info: BackendInfo

    @property
    @abstractmethod
    def image_encoder(self) -> nn.Module: ...

    @property
    @abstractmethod
    def prompt_encoder(self) -> nn.Module: ...

    @property
    @abstractmethod
    def mask_decoder(self) -> nn.Module: ...

    @property
    def prompt_dim(self) -> int:
        return self.info.prompt_dim

    @property
    def has_image_encoder(self) -> bool:
        """False when built with ``image_encoder=False``."""
        return not isinstance(self.image_encoder, AbsentImageEncoder)

    def image_encoder_hash(self) -> str:
        """`state_hash` of everything ``encode_image`` reads: the image-encoder part's state dict
        (each family keeps all of it there, e.g. SAM 2's ``no_mem_embed``).

        Raises:
            ValueError: built without an image encoder and without a checkpoint (unknown weights).
        """
        encoder = self.image_encoder
        if isinstance(encoder, AbsentImageEncoder):
            if encoder.weights_hash is None:
                raise ValueError(
                    "the image encoder was not built and no backend checkpoint was given, so its weights "
                    "are unknown: set the backend checkpoint (random-init weights cannot be cached)"
                )
            return encoder.weights_hash
        return state_hash(encoder.state_dict())

    @abstractmethod
    def feature_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of one image's features per key of ``encode_image``'s output (without the image dim)."""

    @abstractmethod
    def encode_image(self, pixels: torch.Tensor) -> ImageFeatures:
        """``[B,3,S,S]`` backend-normalised pixels -> features, one row per image."""

    @abstractmethod
    def decode(
        self,
        features: ImageFeatures,
        image_index: torch.Tensor,
        text_tokens: torch.Tensor | None,
        points: PointPrompts | None = None,
        boxes: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """Decode one mask per expression.

        Args:
            features: output of ``encode_image`` for B images.
            image_index: ``[N]``, the image of each expression.
            text_tokens: ``[N,T,prompt_dim]`` extra sparse prompt tokens (the projected text), or None.
            points: optional point prompts (input frame).
            boxes: optional ``[N,4]`` boxes (x0, y0, x1, y1) in the input frame.
        """

    @abstractmethod
    def postprocess(
        self, low_res_logits: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> torch.Tensor:
        """``[n,1,h,w]`` low-res logits of one image -> ``[n,H,W]`` logits at the original size."""

    def transform_coords(self, coords: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """Map ``[...,2]`` (x, y) pixel coordinates of the original image into the input frame."""
        h, w = original_size
        new_h, new_w = self.info.image.resized_size(h, w)
        scale = torch.tensor([new_w / w, new_h / h], dtype=coords.dtype, device=coords.device)
        return coords * scale


BACKENDS: Registry[SamBackend, BackendInfo] = Registry("SAM backend", "evf.sam_backends")
