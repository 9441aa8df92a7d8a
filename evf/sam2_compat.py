"""Where EVF depends on sam2 beyond its public API: here, named once, each with a test.

sam2's video predictor post-processes every frame's mask with ``fill_holes_in_mask_scores`` when
its config sets ``fill_hole_area`` (EVF-SAM2's video configs set 8): background regions of at most
that many pixels become foreground (score 0.1). It finds them with
``sam2.utils.misc.get_connected_components``, which calls sam2's compiled CUDA extension
(``sam2._C``). A sam2 built without it (``SAM2_BUILD_CUDA=0``, as EVF installs it on machines
without CUDA) warns and skips the step, so masks, and through the memory every later frame, differ
from EVF-SAM2's on a GPU machine. `use_cpu_connected_components` puts a CPU implementation with
the extension's documented behaviour in its place:

* input ``[N,1,H,W]``, non-zero = foreground;
* 8-connectivity (pixels touching at a corner belong to one component);
* ``labels``: a positive label per foreground component, 0 on background; ``counts``: each
  foreground pixel's component area, 0 on background; both ``[N,1,H,W]`` int32 on the input's device.

The labels' numbering may differ from the kernel's; sam2 reads only ``labels > 0`` and the areas.
tests/test_sam2_compat.py checks the rule on hand-made masks and that sam2 still calls this function
where this module replaces it.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def connected_components(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N,1,H,W]`` mask -> ``(labels, counts)`` as sam2's CUDA ``get_connected_componnets``."""
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"expected masks of shape [N,1,H,W], got {tuple(mask.shape)}")
    binary = mask.detach().to("cpu", torch.uint8).numpy() != 0
    labels = np.zeros(binary.shape, dtype=np.int32)
    counts = np.zeros(binary.shape, dtype=np.int32)
    for i, image in enumerate(binary[:, 0]):
        found, _ = ndimage.label(image, structure=_EIGHT_CONNECTED)
        areas = np.bincount(found.ravel())
        areas[0] = 0
        labels[i, 0], counts[i, 0] = found, areas[found]
    return torch.from_numpy(labels).to(mask.device), torch.from_numpy(counts).to(mask.device)


def has_cuda_extension() -> bool:
    """Whether sam2 was built with its CUDA extension (``sam2._C``)."""
    try:
        from sam2 import _C  # noqa: F401
    except ImportError:
        return False
    return True


def use_cpu_connected_components() -> bool:
    """Make sam2's hole filling run without the CUDA extension; True if it was installed here.

    Replaces ``sam2.utils.misc.get_connected_components`` (the function ``fill_holes_in_mask_scores``
    looks up at call time) by `connected_components`, unless the extension is there.
    """
    import sam2.utils.misc as misc

    if has_cuda_extension() or misc.get_connected_components is connected_components:
        return False
    misc.get_connected_components = connected_components
    return True


__all__ = ["connected_components", "has_cuda_extension", "use_cpu_connected_components"]
