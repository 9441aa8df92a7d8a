"""`evf.preprocessing.ImageSpec` and the backends' postprocessing in numpy, for inference without
torch (`evf.deploy.OnnxPredictor`). Every resize is the one the PyTorch path runs: PIL's where it
uses PIL, and torch's ``F.interpolate`` (``align_corners=False``, no antialiasing) re-derived here
(bilinear: source index clamped at 0, as ATen's linear kernels; bicubic: Keys' a = -0.75 with
clamped taps, as ATen's ``upsample_bicubic2d``; uint8 bilinear: ATen's fixed-point kernel).
Parity with the PyTorch path: tests/deploy.

This module imports neither torch nor anything of evf that does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

_PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
_CUBIC_A = -0.75


def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    src = np.maximum((np.arange(out_size, dtype=np.float32) + 0.5) * np.float32(in_size / out_size) - 0.5, 0)
    low = np.floor(src).astype(np.int64)
    low = np.minimum(low, in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    frac = (src - low).astype(np.float32)
    return low, high, frac


def _bilinear_cv2(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """OpenCV's ``INTER_LINEAR`` on float32 has torch's ``align_corners=False`` arithmetic (within
    1e-5) and is several times faster on large masks: channels go through it 512 at a time."""
    import cv2

    (in_h, in_w), (out_h, out_w) = x.shape[-2:], size
    flat = x.reshape(-1, in_h, in_w)
    out = np.empty((len(flat), out_h, out_w), dtype=np.float32)
    for start in range(0, len(flat), 512):
        chunk = np.ascontiguousarray(flat[start : start + 512].transpose(1, 2, 0))
        resized = cv2.resize(chunk, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        out[start : start + 512] = resized.reshape(out_h, out_w, -1).transpose(2, 0, 1)
    return out.reshape(*x.shape[:-2], out_h, out_w)


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """``[n]`` fractions -> ``[n,4]`` weights of the taps at -1, 0, 1, 2."""
    a = _CUBIC_A

    def near(x: np.ndarray) -> np.ndarray:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: np.ndarray) -> np.ndarray:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1).astype(np.float32)


def resize(x: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """``[..., H, W]`` float32 -> ``[..., h, w]``, as ``F.interpolate(x, size, mode=mode,
    align_corners=False, antialias=False)``."""
    (in_h, in_w), (out_h, out_w) = x.shape[-2:], size
    if (in_h, in_w) == (out_h, out_w):
        return x.astype(np.float32, copy=True)
    x = x.astype(np.float32, copy=False)
    if mode == "bilinear":
        return _bilinear_cv2(x, (out_h, out_w))
    if mode == "bilinear_numpy":  # the same arithmetic without OpenCV (the reference in tests)
        lo, hi, f = _linear_taps(in_h, out_h)
        x = x[..., lo, :] * (1 - f)[:, None] + x[..., hi, :] * f[:, None]
        lo, hi, f = _linear_taps(in_w, out_w)
        return (x[..., lo] * (1 - f) + x[..., hi] * f).astype(np.float32)
    if mode == "bicubic":
        for axis, (n_in, n_out) in ((-2, (in_h, out_h)), (-1, (in_w, out_w))):
            src = (np.arange(n_out, dtype=np.float32) + 0.5) * np.float32(n_in / n_out) - 0.5
            base = np.floor(src).astype(np.int64)
            weights = _cubic_weights((src - base).astype(np.float32))
            taps = np.clip(base[:, None] + np.arange(-1, 3)[None], 0, n_in - 1)
            moved = np.moveaxis(x, axis, -1)
            out = sum(moved[..., taps[:, k]] * weights[:, k] for k in range(4))
            x = np.moveaxis(out, -1, axis)
        return x.astype(np.float32)
    raise ValueError(f"no numpy resize for mode {mode!r}")


def _uint8_taps(in_size: int, out_size: int) -> tuple[list[tuple[int, np.ndarray]], int]:
    """Per output pixel, its first input pixel and integer weights, and their fixed-point precision:
    ATen's uint8 bilinear kernel (``_compute_indices_int16_weights_aa`` with support 1)."""
    scale = in_size / out_size
    taps = []
    for i in range(out_size):
        centre = scale * (i + 0.5)
        first, last = max(int(centre - 0.5), 0), min(int(centre + 1.5), in_size)
        weights = np.maximum(0.0, 1.0 - np.abs(np.arange(first, last) - centre + 0.5))
        taps.append((first, weights / weights.sum() if weights.sum() else weights))
    largest = max(w.max() for _, w in taps)
    precision = 0
    while precision < 22 and int(0.5 + largest * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    return [(first, np.floor(0.5 + w * (1 << precision)).astype(np.int64)) for first, w in taps], precision


def resize_uint8(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 ``[..., H, W]`` -> ``[..., h, w]`` exactly as ``F.interpolate`` on a uint8 tensor
    (bilinear, ``align_corners=False``): fixed-point weights, the width first, uint8 in between."""
    for axis, out_size in ((-1, size[1]), (-2, size[0])):
        if x.shape[axis] == out_size:
            continue
        moved = np.moveaxis(x, axis, -1).astype(np.int64)
        taps, precision = _uint8_taps(moved.shape[-1], out_size)
        out = np.empty(moved.shape[:-1] + (out_size,), dtype=np.int64)
        for i, (first, weights) in enumerate(taps):
            out[..., i] = (moved[..., first : first + len(weights)] * weights).sum(-1) + (
                1 << (precision - 1)
            )
        x = np.moveaxis(np.clip(out >> precision, 0, 255).astype(np.uint8), -1, axis)
    return x


def longest_side_size(height: int, width: int, target: int) -> tuple[int, int]:
    scale = target * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resized_size(spec: Mapping[str, Any], height: int, width: int) -> tuple[int, int]:
    """The content's size in the model input (all of it but ``longest_side_pad``'s padding)."""
    if spec["resize"] == "longest_side_pad":
        return longest_side_size(height, width, spec["size"])
    return spec["size"], spec["size"]


def transform_image(spec: Mapping[str, Any], image: np.ndarray) -> np.ndarray:
    """uint8 ``[H,W,3]`` -> float32 ``[3,S,S]``, as `evf.preprocessing.ImageSpec.__call__` (``spec``:
    its fields, as `evf.deploy` writes them in ``deploy.json``)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image as a uint8 numpy array of shape [H,W,3], got {image!r:.80}")
    size, resize_mode, mode = spec["size"], spec["resize"], spec["interpolation"]
    if resize_mode == "square":
        h, w = size, size
    elif resize_mode in ("longest_side_pad", "longest_side_stretch"):
        h, w = longest_side_size(*image.shape[:2], size)
    else:
        raise ValueError(f"no numpy preprocessing for resize {resize_mode!r}")
    if spec["resampler"] == "torch" and spec["antialias"] and (h < image.shape[0] or w < image.shape[1]):
        raise ValueError("no numpy preprocessing for torch's antialiased downscaling")
    if (h, w) != image.shape[:2] and spec["resampler"] == "pil":
        image = np.asarray(Image.fromarray(image).resize((w, h), _PIL_FILTERS[mode]))
    x = np.ascontiguousarray(image.transpose(2, 0, 1))
    if x.shape[1:] != (h, w) and spec["resampler"] == "torch_uint8":
        if mode != "bilinear":
            raise ValueError(f"no numpy preprocessing for a uint8 {mode} resize")
        x = resize_uint8(x, (h, w))
    x = x.astype(np.float32)
    if x.shape[1:] != (h, w):
        x = resize(x, (h, w), mode)
    scale = np.float32(255.0 / spec["pixel_scale"])
    mean = np.asarray(spec["mean"], dtype=np.float32).reshape(3, 1, 1) * scale
    std = np.asarray(spec["std"], dtype=np.float32).reshape(3, 1, 1) * scale
    x = (x - mean) / std
    if resize_mode == "longest_side_pad":
        x = np.pad(x, ((0, 0), (0, size - h), (0, size - w)))
    elif resize_mode == "longest_side_stretch":
        x = resize(x, (size, size), "bilinear")
    return x.astype(np.float32)


def transform_coords(
    spec: Mapping[str, Any], coords: np.ndarray, original_size: tuple[int, int]
) -> np.ndarray:
    """``[...,2]`` (x, y) original-image pixels -> the model input's frame (`ImageSpec.transform_coords`)."""
    h, w = original_size
    coords = np.asarray(coords, dtype=np.float32)
    if spec["resize"] == "square":
        return coords / np.asarray([w, h], dtype=np.float32) * np.float32(spec["size"])
    new_h, new_w = resized_size(spec, h, w)
    return coords * np.asarray([new_w / w, new_h / h], dtype=np.float32)


def postprocess(
    family: str,
    spec: Mapping[str, Any],
    low_res: np.ndarray,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
) -> np.ndarray:
    """``[n,1,h,w]`` low-res logits -> ``[n,H,W]`` at the original size, as the family's backend."""
    if family == "sam":  # upsample to the padded input, crop the padding, then to the original size
        x = resize(low_res, (spec["size"], spec["size"]), "bilinear")[..., : input_size[0], : input_size[1]]
        return resize(x, tuple(original_size), "bilinear")[:, 0]
    return resize(low_res, tuple(original_size), "bilinear")[:, 0]


__all__ = ["postprocess", "resize", "resize_uint8", "resized_size", "transform_coords", "transform_image"]
