"""Reading images robustly: any PIL mode to uint8 RGB, EXIF orientation applied, clear errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class ImageReadError(OSError):
    """An image file is missing, truncated or not an image; the message names the file."""


def read_rgb(path: str | Path, exif_transpose: bool = True) -> np.ndarray:
    """Read ``path`` as uint8 ``[H,W,3]`` RGB (grayscale, RGBA, CMYK, 16-bit and EXIF-rotated
    images are converted; transparency is dropped).

    Args:
        path: the image file.
        exif_transpose: apply the EXIF orientation, as viewers and ``cv2.imread`` do; False keeps
            the stored pixel layout (for annotations drawn on the stored pixels).
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            return _to_rgb(img, exif_transpose)
    except FileNotFoundError:
        raise ImageReadError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"cannot read image {path}: {err}") from err


def decode_rgb(data: bytes, name: str, exif_transpose: bool = True) -> np.ndarray:
    """`read_rgb` for an encoded image held in memory (e.g. LabelMe's embedded ``imageData``);
    ``name`` says where it came from in error messages."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return _to_rgb(img, exif_transpose)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"cannot read image {name}: {err}") from err


def _to_rgb(img: Image.Image, exif_transpose: bool) -> np.ndarray:
    img.load()
    if exif_transpose:
        img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray((arr / max(arr.max(), 1) * 255).astype(np.uint8))
    return np.asarray(img.convert("RGB"))


LABEL_MODES = ("L", "P", "I;16", "I;16B", "I;16L", "I")


def read_label(path: str | Path) -> np.ndarray:
    """Read a label map (one class id per pixel: 8-bit grey, palette or 16-bit PNG) as a 2-D array
    of ids, without any colour conversion (a palette PNG gives its indices)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in LABEL_MODES:
                raise ImageReadError(
                    f"label map {path} has mode {img.mode}; expected a single-channel image of class ids "
                    f"(one of {', '.join(LABEL_MODES)})"
                )
            return np.asarray(img)
    except FileNotFoundError:
        raise ImageReadError(f"label map not found: {path}") from None
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"cannot read label map {path}: {err}") from err


def read_mask(path: str | Path) -> np.ndarray:
    """Read a binary mask image as bool ``[H,W]``: a pixel is in the mask where its value is non-zero
    (any channel of a colour image; a palette image by its index; transparency ignored)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in LABEL_MODES or img.mode == "1":
                return np.asarray(img) != 0
            return np.asarray(img.convert("RGB")).any(axis=2)
    except FileNotFoundError:
        raise ImageReadError(f"mask not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"cannot read mask {path}: {err}") from err


def list_images(path: str | Path) -> list[Path]:
    """A file -> [file]; a folder -> its image files, sorted."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return [path]
