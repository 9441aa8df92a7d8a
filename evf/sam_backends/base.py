"""The interface every SAM backend implements, and the metadata it registers with.

A backend owns its preprocessing, its (usually frozen) image encoder, its prompt encoder and mask
decoder, and its postprocessing. The text enters as extra sparse prompt tokens; nothing outside
`evf.sam_backends` knows which backend is in use.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

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


class SamBackend(nn.Module, ABC):
    """Image encoder + prompt encoder + mask decoder of one SAM family."""

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
