"""Mask overlays for TensorBoard and `evf predict`: prediction vs ground truth, captioned."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from evf.batch import Batch

PRED_COLOUR = np.array([50, 120, 220], dtype=np.float32)  # blue: prediction
TRUE_COLOUR = np.array([240, 200, 40], dtype=np.uint8)  # yellow: ground-truth outline


def denormalise(
    pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], scale: float
) -> np.ndarray:
    """``[3,S,S]`` normalised tensor -> uint8 ``[S,S,3]``."""
    m = torch.tensor(mean).view(3, 1, 1) * (255.0 / scale)
    s = torch.tensor(std).view(3, 1, 1) * (255.0 / scale)
    x = pixels.detach().float().cpu() * s + m
    return x.clamp(0, 255).byte().permute(1, 2, 0).numpy()


def overlay(image: np.ndarray, pred: np.ndarray, target: np.ndarray | None = None) -> np.ndarray:
    """Blend the predicted mask into ``image`` (uint8 HxWx3) and outline the true mask."""
    out = image.astype(np.float32)
    out[pred] = 0.5 * out[pred] + 0.5 * PRED_COLOUR
    out = out.astype(np.uint8)
    if target is not None:
        edge = target & ~_erode(target)
        out[edge] = TRUE_COLOUR
    return out


def _erode(mask: np.ndarray) -> np.ndarray:
    m = np.pad(mask, 1, constant_values=False)
    return m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]


def captioned(tile: np.ndarray, text: str, height: int = 160) -> np.ndarray:
    """Resize a tile to ``height`` and write ``text`` under it."""
    h, w = tile.shape[:2]
    width = max(int(w * height / h), 1)
    img = Image.fromarray(tile).resize((width, height), Image.Resampling.NEAREST)
    canvas = Image.new("RGB", (max(width, 200), height + 14), (0, 0, 0))
    canvas.paste(img, (0, 0))
    ImageDraw.Draw(canvas).text((2, height + 1), text[:40], fill=(255, 255, 255))
    return np.asarray(canvas)


def overlay_grid(
    images: list[np.ndarray], batch: Batch, logits: list[torch.Tensor], max_items: int, columns: int = 4
) -> np.ndarray:
    """A grid of up to ``max_items`` expressions of a batch: prediction blended, truth outlined,
    each captioned with its expression. ``images`` are the batch's images at original size."""
    tiles = []
    seen: dict[int, int] = {}
    for n, i in enumerate(batch.image_index.tolist()[:max_items]):
        j = seen.get(i, 0)
        seen[i] = j + 1
        pred = (logits[i][j] > 0).cpu().numpy()
        target = batch.masks[i][j].cpu().numpy().astype(bool)
        tiles.append(captioned(overlay(images[i], pred, target), batch.texts[n]))
    return _grid(tiles, columns)


def heatmap(image: np.ndarray, attention: np.ndarray) -> np.ndarray:
    """Blend an attention map ``[h,w]`` (any scale; upsampled bilinearly, scaled to its own maximum)
    over ``image`` (uint8 HxWx3) in black -> red -> yellow."""
    h, w = image.shape[:2]
    a = np.asarray(Image.fromarray(attention.astype(np.float32)).resize((w, h), Image.Resampling.BILINEAR))
    a = np.clip(a / max(float(a.max()), 1e-12), 0.0, 1.0)[..., None]
    colour = np.concatenate([np.clip(2 * a, 0, 1), np.clip(2 * a - 1, 0, 1), np.zeros_like(a)], axis=-1) * 255
    return (0.4 * image.astype(np.float32) + 0.6 * colour).astype(np.uint8)


def attention_grid(
    images: list[np.ndarray], batch: Batch, attention: torch.Tensor, columns: int = 4
) -> np.ndarray:
    """The paper's Figure 5 view: for the first ``len(attention)`` expressions of a batch, the
    [CLS]-to-patch attention ``[n,h,w]`` over the image, captioned with the expression."""
    index = batch.image_index.tolist()
    tiles = [
        captioned(heatmap(images[index[n]], attention[n].detach().float().cpu().numpy()), batch.texts[n])
        for n in range(len(attention))
    ]
    return _grid(tiles, columns)


def images_from_pixels(
    pixels: torch.Tensor, spec, input_sizes: list[tuple[int, int]], original_sizes: list[tuple[int, int]]
) -> list[np.ndarray]:
    """Recover displayable uint8 images from normalised model inputs (crop padding, resize back)."""
    out = []
    for x, (h, w), (oh, ow) in zip(pixels, input_sizes, original_sizes, strict=True):
        img = denormalise(x, spec.mean, spec.std, spec.pixel_scale)
        if spec.resize == "longest_side_pad":
            img = img[:h, :w]
        out.append(np.asarray(Image.fromarray(img).resize((ow, oh), Image.Resampling.BILINEAR)))
    return out


def _grid(tiles: list[np.ndarray], columns: int) -> np.ndarray:
    h = max(t.shape[0] for t in tiles)
    w = max(t.shape[1] for t in tiles)
    rows = (len(tiles) + columns - 1) // columns
    grid = np.zeros((rows * h, min(columns, len(tiles)) * w, 3), dtype=np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, columns)
        grid[r * h : r * h + t.shape[0], c * w : c * w + t.shape[1]] = t
    return grid
