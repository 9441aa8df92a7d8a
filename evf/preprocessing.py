"""Image preprocessing shared by encoders and backends: uint8 HxWx3 numpy -> normalised tensors.

Each encoder and backend declares its preprocessing as data (an `ImageSpec`), so the data side can
build transforms from registry metadata without building any weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

Interpolation = Literal["bilinear", "bicubic"]
ResizeMode = Literal["square", "longest_side_pad", "longest_side_stretch", "shortest_side_center_crop"]
Resampler = Literal["torch", "pil", "torch_uint8"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN = (0.5, 0.5, 0.5)
HALF_STD = (0.5, 0.5, 0.5)
PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


@dataclass(frozen=True)
class ImageSpec:
    """How a model wants its pixels.

    Attributes:
        size: side of the square model input.
        mean: per-channel mean, on the scale given by ``pixel_scale``.
        std: per-channel std, same scale.
        pixel_scale: 255.0 when mean/std are on 0..255 pixels (SAM), 1.0 when on [0, 1].
        resize: ``square`` stretches to size x size; ``longest_side_pad`` resizes the longest side to
            ``size`` (aspect kept, as SAM's ``ResizeLongestSide``) and pads bottom/right with zeros
            after normalisation; ``longest_side_stretch`` resizes the longest side to ``size`` as
            ``longest_side_pad`` does, normalises, then stretches that to size x size with torch
            bilinear interpolation (no antialiasing): the two-step resize of EVF-SAM's EfficientSAM
            pipeline; ``shortest_side_center_crop`` resizes the shortest side to ``size`` (aspect
            kept, as torchvision's ``Resize(size)``) and keeps the central size x size square (as
            ``CenterCrop(size)``): CLIP's evaluation transform.
        interpolation: resampling filter of the (first) resize.
        resampler: ``torch`` resizes the float image as torchvision's tensor ``Resize`` does
            (unclamped; antialiased unless ``antialias`` is False); ``pil`` resizes the uint8 image
            with PIL as SAM's ``ResizeLongestSide.apply_image`` does; ``torch_uint8`` resizes the
            uint8 tensor with ``F.interpolate`` (no antialiasing, result rounded to uint8), as
            EVF-SAM's ``inference.py`` does for SAM-2 and EfficientSAM.
        antialias: with the ``torch`` resampler, low-pass filter when shrinking (torchvision's
            default since 0.17). False is torchvision < 0.17's tensor resize, and what EVF-SAM's
            ``beit3_preprocess`` asks for explicitly (``antialias=None``).
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pixel_scale: float = 1.0
    resize: ResizeMode = "square"
    interpolation: Interpolation = "bicubic"
    resampler: Resampler = "torch"
    antialias: bool = True

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """Size of the image content in the model input: all of it except the padding of
        ``longest_side_pad``."""
        if self.resize == "longest_side_pad":
            return longest_side_size(height, width, self.size)
        return self.size, self.size

    def transform_coords(self, coords: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """Map ``[...,2]`` (x, y) pixels of an original ``(H, W)`` image into the model input.

        A square input divides by (W, H) and multiplies by the size, in that order, as
        ``SAM2Transforms.transform_coords(normalize=True)``; the others scale by resized / original
        size, as segment-anything's ``ResizeLongestSide.apply_coords``.
        """
        h, w = original_size
        if self.resize == "square":
            return coords / torch.tensor([w, h], dtype=coords.dtype, device=coords.device) * self.size
        new_h, new_w = self.resized_size(h, w)
        return coords * torch.tensor([new_w / w, new_h / h], dtype=coords.dtype, device=coords.device)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """uint8 ``[H,W,3]`` RGB -> float ``[3,size,size]``."""
        check_rgb_uint8(image)
        if self.resize == "square":
            h, w = self.size, self.size
        elif self.resize == "shortest_side_center_crop":
            h, w = shortest_side_size(*image.shape[:2], self.size)
        else:
            h, w = longest_side_size(*image.shape[:2], self.size)
        if (h, w) != tuple(image.shape[:2]) and self.resampler == "pil":
            image = np.asarray(Image.fromarray(image).resize((w, h), PIL_FILTERS[self.interpolation]))
        x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)
        if x.shape[1:] != (h, w) and self.resampler == "torch_uint8":
            x = F.interpolate(x[None], size=(h, w), mode=self.interpolation, align_corners=False)[0]
        x = x.float()
        if x.shape[1:] != (h, w):
            x = F.interpolate(x[None], size=(h, w), mode=self.interpolation, antialias=self.antialias)[0]
        mean = torch.tensor(self.mean).view(3, 1, 1) * (255.0 / self.pixel_scale)
        std = torch.tensor(self.std).view(3, 1, 1) * (255.0 / self.pixel_scale)
        x = (x - mean) / std
        if self.resize == "longest_side_pad":
            x = F.pad(x, (0, self.size - w, 0, self.size - h))
        elif self.resize == "shortest_side_center_crop":
            top, left = round((h - self.size) / 2.0), round((w - self.size) / 2.0)
            x = x[:, top : top + self.size, left : left + self.size]
        elif self.resize == "longest_side_stretch":
            x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear", align_corners=False)[0]
        return x


def longest_side_size(height: int, width: int, target: int) -> tuple[int, int]:
    """Same arithmetic as ``segment_anything.utils.transforms.ResizeLongestSide.get_preprocess_shape``."""
    scale = target * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def shortest_side_size(height: int, width: int, target: int) -> tuple[int, int]:
    """Same arithmetic as torchvision's ``Resize(target)`` (an int size): the shortest side becomes
    ``target``, the longest ``int(target * long / short)``."""
    if height <= width:
        return target, int(target * width / height)
    return int(target * height / width), target


def check_rgb_uint8(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
        raise ValueError(f"expected an RGB image as a uint8 numpy array of shape [H,W,3], got {desc}")
