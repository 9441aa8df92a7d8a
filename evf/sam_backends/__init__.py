"""SAM backends: frozen image encoder + prompt encoder + mask decoder, each family behind one
`SamBackend` interface. Registered in `BACKENDS` (``sam_vit_h``, ``sam2.1_hiera_l``,
``efficient_sam_vits``, ``sam_tiny``, ...); third-party backends register through the
``evf.sam_backends`` entry-point group. See docs/backends.md.
"""

from evf.preprocessing import ImageSpec
from evf.sam_backends import (
    efficient_sam,  # noqa: F401  (registers EfficientSAM)
    sam,  # noqa: F401  (registers the SAM family)
    sam2,  # noqa: F401  (registers the SAM 2 / 2.1 family)
)
from evf.sam_backends.base import (
    BACKENDS,
    BackendInfo,
    DecoderOutput,
    ImageFeatures,
    PointPrompts,
    ReleaseLayout,
    SamBackend,
)


def create_backend(name: str, **kwargs) -> SamBackend:
    """Build a registered backend, e.g. ``create_backend("sam_vit_h", checkpoint="sam_vit_h_4b8939.pth")``."""
    return BACKENDS.create(name, **kwargs)


def list_backends(pattern: str = "*") -> list[str]:
    """Registered backend names matching an fnmatch pattern."""
    return BACKENDS.names(pattern)


def backend_image_spec(name: str) -> ImageSpec:
    """The image preprocessing of backend ``name``, without building its weights."""
    return BACKENDS.info(name).image


__all__ = [
    "BACKENDS",
    "BackendInfo",
    "DecoderOutput",
    "ImageFeatures",
    "PointPrompts",
    "ReleaseLayout",
    "SamBackend",
    "backend_image_spec",
    "create_backend",
    "list_backends",
]
