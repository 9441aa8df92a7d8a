"""Small helpers shared by tests."""

from collections.abc import Sequence

import numpy as np
import torch

import evf


def segment(
    model: evf.EVFSAM,
    image: np.ndarray,
    prompts: Sequence[str | evf.Prompt] | None,
    dtype: torch.dtype | None = None,
    **arrays,
) -> evf.Prediction:
    """One image's prompts through a fresh `evf.Predictor` (``arrays``: its points / point_labels /
    boxes keywords)."""
    predictor = evf.Predictor(model, dtype=dtype)
    predictor.set_image(image)
    return predictor.predict(prompts, **arrays)
