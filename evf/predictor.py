"""`Predictor`: encode an image once, then answer any number of prompts in decoder time.

As segment-anything keeps ``Sam`` and ``SamPredictor`` apart, `EVFSAM` stays a pure module and the
predictor owns the image state: the image's inputs (`evf.batch.ImageInputs`) and its backend
features. Prompts are in original-image pixels; `evf.batch.BatchBuilder` maps them into the
backend's frame, and `evf.decode.decode` turns them into masks::

    predictor = evf.Predictor(model)
    predictor.set_image(image)                       # uint8 [H,W,3] RGB; the image encoder runs here
    predictor.predict(["the dog", "the red car"])    # decoder time
    predictor.predict([evf.Prompt("the cat", box=(10, 20, 200, 180)), evf.Prompt(points=((50, 60),))])
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace

import numpy as np
import torch

from evf.batch import BatchBuilder, ImageInputs
from evf.decode import Prediction, check_presence_threshold, decode, image_features
from evf.model import EVFSAM
from evf.prompts import Prompt, as_prompts
from evf.sam_backends import ImageFeatures


def autocast_to(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """``torch.autocast`` to ``dtype``, or no context at all for None (an enclosing autocast stays on;
    ``autocast(enabled=False)`` would switch it off)."""
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


class Predictor:
    """Text, point, box and mixed prompts on one image at a time.

    Args:
        model: the model (its device is used; put it in eval mode for inference).
        threshold: logit threshold of the masks.
        dtype: compute dtype under ``torch.autocast`` (e.g. ``torch.bfloat16``), weights unchanged;
            None adds no autocast: the weights' own dtype (``model.to(torch.bfloat16)`` runs
            all-bf16), or an enclosing autocast, decides. Logits come back as float32 either way.
        presence_threshold: for a model with a presence head, a prompt whose target is less likely
            than this to be in the image gets an empty mask (`Prediction.present` False).
    """

    def __init__(
        self,
        model: EVFSAM,
        threshold: float = 0.0,
        dtype: torch.dtype | None = None,
        presence_threshold: float = 0.5,
    ) -> None:
        self.model = model
        self.threshold = threshold
        self.dtype = dtype
        self.presence_threshold = check_presence_threshold(presence_threshold)
        self.builder = BatchBuilder(model.encoder.preprocessor, model.backend.info.image)
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def is_image_set(self) -> bool:
        return self._image is not None

    @torch.no_grad()
    def set_image(self, image: np.ndarray, features: ImageFeatures | None = None) -> None:
        """Preprocess ``image`` (uint8 ``[H,W,3]`` RGB) and run the backend's image encoder on it once,
        unless its ``features`` are given: one image's rows (`SamBackend.feature_shapes`, e.g. what
        `evf.cache.EmbeddingStore.read` returns), with or without a leading image dimension of 1.

        Raises:
            ValueError: not a uint8 RGB image, or features of other names or shapes.
        """
        inputs = self.builder.images([image], backend_pixels=features is None)
        with autocast_to(self.device, self.dtype):
            if features is None:
                features = image_features(self.model, inputs)
            else:
                features = self._checked(features)
        # Only what `predict` reads stays, on the device: the backend pixels are not needed again.
        self._image = replace(inputs, sam_pixels=None, encoder_pixels=inputs.encoder_pixels.to(self.device))
        self._features = {k: v.to(self.device) for k, v in features.items()}

    def _checked(self, features: ImageFeatures) -> ImageFeatures:
        shapes = self.model.backend.feature_shapes()
        if set(features) != set(shapes):
            raise ValueError(f"features have keys {sorted(features)}, the backend expects {sorted(shapes)}")
        out = {}
        for key, shape in shapes.items():
            value = features[key]
            if tuple(value.shape) == tuple(shape):
                value = value[None]
            if tuple(value.shape) != (1, *shape):
                raise ValueError(
                    f"features[{key!r}] has shape {tuple(value.shape)}, "
                    f"expected {tuple(shape)} or {(1, *shape)}"
                )
            out[key] = value
        return out

    def reset_image(self) -> None:
        """Forget the current image and its features."""
        self._image: ImageInputs | None = None
        self._features: ImageFeatures | None = None

    @torch.no_grad()
    def predict(
        self,
        prompts: str | Prompt | Sequence[str | Prompt] | None,
        points: Sequence[np.ndarray] | np.ndarray | None = None,
        point_labels: Sequence[np.ndarray] | np.ndarray | None = None,
        boxes: np.ndarray | None = None,
    ) -> Prediction:
        """Masks for ``prompts`` (expressions and/or `Prompt` s) on the current image, in order.

        Prompts of one kind (`Prompt.kind`) decode together; each gets exactly the decoder tokens
        it would get alone. SamPredictor-style arrays are accepted too, one entry per prompt
        (`evf.prompts.prompts_from_arrays`): ``points`` ``[K_i,2]`` (x, y) and ``point_labels``
        ``[K_i]`` (1 foreground, 0 background; default all 1) beside or instead of the text
        (``prompts`` None), and ``boxes`` ``[n,4]`` (x0, y0, x1, y1), all in original-image pixels.

        Raises:
            RuntimeError: no image set.
            ValueError: no prompts, lists of different lengths, or a malformed prompt.
        """
        if self._image is None or self._features is None:
            raise RuntimeError("call set_image(image) before predict(prompts)")
        prompts = as_prompts(prompts, points, point_labels, boxes)
        batch = self.builder.prompt_batch(self._image, [prompts], ["image"]).to(self.device)
        with autocast_to(self.device, self.dtype):
            return decode(
                self.model,
                batch,
                self.threshold,
                features=self._features,
                presence_threshold=self.presence_threshold,
            )[0]


__all__ = ["Predictor", "autocast_to"]
