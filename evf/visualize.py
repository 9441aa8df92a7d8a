"""Mask overlays for TensorBoard and `evf predict`: prediction vs ground truth, captioned."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from evf.batch import Batch

if TYPE_CHECKING:
    from evf.model import EVFSAM

# Colours no shapes object has (red, green, blue, yellow) and that stand out on grey.
PRED_COLOUR = np.array([230, 40, 230], dtype=np.float32)  # magenta: prediction, filled
TRUE_COLOUR = np.array([0, 255, 255], dtype=np.uint8)  # cyan: ground truth, outlined
TILE = 256  # px, longest side of one expression's tile
# One colour per tracked object in video overlays (again none of the shapes colours), by name for captions.
OBJECT_COLOURS = {
    "magenta": (230, 40, 230),
    "cyan": (0, 230, 230),
    "orange": (255, 140, 0),
    "white": (255, 255, 255),
    "purple": (140, 60, 220),
    "pink": (255, 130, 180),
}


def denormalise(
    pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], scale: float
) -> np.ndarray:
    """``[3,S,S]`` normalised tensor -> uint8 ``[S,S,3]``."""
    m = torch.tensor(mean).view(3, 1, 1) * (255.0 / scale)
    s = torch.tensor(std).view(3, 1, 1) * (255.0 / scale)
    x = pixels.detach().float().cpu() * s + m
    return x.clamp(0, 255).byte().permute(1, 2, 0).numpy()


def overlay(
    image: np.ndarray,
    pred: np.ndarray,
    target: np.ndarray | None = None,
    edge: int = 1,
    colour: tuple[int, int, int] | np.ndarray = PRED_COLOUR,
) -> np.ndarray:
    """Fill the predicted mask into ``image`` (uint8 HxWx3, half ``colour``, magenta by default) and
    outline the true mask in cyan, ``edge`` pixels wide."""
    out = image.astype(np.float32)
    out[pred] = 0.5 * out[pred] + 0.5 * np.asarray(colour, dtype=np.float32)
    out = out.astype(np.uint8)
    if target is not None:
        inner = target
        for _ in range(edge):
            inner = _erode(inner)
        out[target & ~inner] = TRUE_COLOUR
    return out


def _erode(mask: np.ndarray) -> np.ndarray:
    m = np.pad(mask, 1, constant_values=False)
    return m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]


def _font(size: int = 14) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _upscale(array: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize so that the longest side is ``size`` (masks stay masks)."""
    h, w = array.shape[:2]
    scale = size / max(h, w)
    shape = (max(round(w * scale), 1), max(round(h * scale), 1))
    if array.dtype == bool:
        return np.asarray(Image.fromarray(array).resize(shape, Image.Resampling.NEAREST))
    return np.asarray(Image.fromarray(array).resize(shape, Image.Resampling.BILINEAR))


def captioned(tile: np.ndarray, lines: list[str], width: int = TILE) -> np.ndarray:
    """``tile`` on a black canvas ``width`` wide with ``lines`` of text under it (long lines cut)."""
    font = _font()
    line_height = 17
    canvas = Image.new("RGB", (width, tile.shape[0] + 4 + line_height * len(lines)), (0, 0, 0))
    canvas.paste(Image.fromarray(tile), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, text in enumerate(lines):
        while text and draw.textlength(text, font=font) > width - 4:
            text = text[:-2] + "…"
        draw.text((2, tile.shape[0] + 2 + k * line_height), text, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def tile(image: np.ndarray, pred: np.ndarray, target: np.ndarray, text: str, size: int = TILE) -> np.ndarray:
    """One expression: image, prediction and truth upscaled to ``size`` px (a 20 px shape of a 128 px
    image becomes 40 px), prediction filled, truth outlined, the expression and the IoU under it."""
    inter, union = (pred & target).sum(), (pred | target).sum()
    iou = inter / union if union else 1.0
    drawn = overlay(_upscale(image, size), _upscale(pred, size), _upscale(target, size), edge=2)
    return captioned(drawn, [text, f"IoU {iou:.2f}"], width=size)


def legend(width: int) -> np.ndarray:
    """A strip saying which colour is which."""
    canvas = Image.new("RGB", (width, 24), (0, 0, 0))
    draw, font = ImageDraw.Draw(canvas), _font()
    draw.rectangle((4, 5, 18, 19), fill=tuple(int(c) for c in PRED_COLOUR))
    draw.text((24, 4), "prediction (fill)", fill=(255, 255, 255), font=font)
    draw.rectangle((170, 5, 184, 19), outline=tuple(int(c) for c in TRUE_COLOUR), width=2)
    draw.text((190, 4), "ground truth (outline)", fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def overlay_grid(
    images: list[np.ndarray], batch: Batch, logits: list[torch.Tensor], max_items: int, columns: int = 4
) -> np.ndarray:
    """A grid of up to ``max_items`` expressions of a batch under a legend: each tile the image with
    the prediction filled and the truth outlined, its expression and IoU under it. ``images`` are
    the batch's images at original size."""
    tiles = []
    seen: dict[int, int] = {}
    for n, i in enumerate(batch.image_index.tolist()[:max_items]):
        j = seen.get(i, 0)
        seen[i] = j + 1
        pred = (logits[i][j] > 0).cpu().numpy()
        target = batch.masks[i][j].cpu().numpy().astype(bool)
        tiles.append(tile(images[i], pred, target, batch.texts[n]))
    grid = _grid(tiles, columns)
    return np.concatenate([legend(max(grid.shape[1], 400))[:, : grid.shape[1]], grid])


def truth_grid(entries: list[tuple[np.ndarray, np.ndarray, list[str]]], columns: int = 4) -> np.ndarray:
    """Ground truth at a glance (``evf data-check``): per entry ``(image, mask, caption lines)`` the
    image with the mask filled and outlined, the caption under it."""
    tiles = []
    for image, mask, lines in entries:
        big = _upscale(mask, TILE)
        tiles.append(captioned(overlay(_upscale(image, TILE), big, big, edge=2), lines))
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
        captioned(
            heatmap(_upscale(images[index[n]], TILE), attention[n].detach().float().cpu().numpy()),
            [batch.texts[n]],
        )
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


def log_overlays(
    experiment, model: EVFSAM, batch: Batch, logits: list[torch.Tensor], tag: str, step: int, count: int
) -> None:
    """Add ``<tag>overlays`` (prediction vs ground truth of the first ``count`` expressions) and, for
    encoders with a ``cls_attention`` method (BEIT-3), ``<tag>attention`` to a TensorBoard
    ``experiment``. Images come from the backend's pixels, or the encoder's when features came from
    an embedding cache."""
    if batch.sam_pixels is not None:
        pixels, spec = batch.sam_pixels, model.backend.info.image
        input_sizes = batch.input_sizes
    else:
        pixels, spec = batch.encoder_pixels, model.encoder.preprocessor.image
        input_sizes = [(spec.size, spec.size)] * batch.num_images
    images = images_from_pixels(pixels, spec, input_sizes, batch.original_sizes)
    grid = overlay_grid(images, batch, [lg.detach().float() for lg in logits], count)
    experiment.add_image(f"{tag}overlays", grid, step, dataformats="HWC")
    cls_attention = getattr(model.encoder, "cls_attention", None)
    rows = slice(0, min(count, len(batch.texts)))
    inputs = (batch.input_ids[rows], batch.attention_mask[rows], batch.image_index[rows])
    attention = None if cls_attention is None else cls_attention(batch.encoder_pixels, *inputs)
    if attention is not None:
        experiment.add_image(
            f"{tag}attention", attention_grid(images, batch, attention), step, dataformats="HWC"
        )
