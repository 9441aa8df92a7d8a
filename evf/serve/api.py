"""The model side of ``evf serve``: LitServe APIs that run in the inference workers.

``/images`` encodes an image once and caches its state (`FeatureCache`); ``/segment`` answers
prompts on a cached or inline image. ``/segment`` batches requests across clients (LitServe's
``max_batch_size`` / ``batch_timeout``): with PyTorch underneath, the batch is one `evf.batch.Batch`
over every request's image and prompts, decoded by `evf.decode.decode` in one pass (the multimodal
encoder once over every text, the mask decoder once per prompt kind); with ONNX Runtime
(`evf.deploy.OnnxPredictor`) the requests of a batch run one after another. Requests arrive
validated (`evf.serve.schema`), so a request here fails only through a bug.
"""

# No `from __future__ import annotations`: LitServe reads decode_request's annotation as the
# request body type (a pydantic model, validated by FastAPI), which a string would not be.

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np

from evf.cache.keys import pixel_hash
from evf.prompts import Prompt
from evf.serve.batching import QueuedBatchLoop
from evf.serve.cache import FeatureCache, ImageState
from evf.serve.schema import ImageRequest, SegmentRequest, decode_image


@dataclass(frozen=True)
class ModelSource:
    """Where the workers load the model from: a run checkpoint, a released/exported directory, or
    an ``evf export --format onnx`` directory (``runtime="onnx"``)."""

    ckpt_path: Path | None = None
    pretrained: Path | None = None
    onnx: Path | None = None
    precision: str = "fp32"  # fp32 | bf16 (PyTorch: autocast on the CPU)


class _Runtime:
    """One worker's model and how it turns images and prompts into masks."""

    def __init__(self, source: ModelSource, threshold_presence: float) -> None:
        self.presence_threshold = threshold_presence
        self.onnx = None
        if source.onnx is not None:
            from evf.deploy import OnnxPredictor

            # no spin-waiting: the workers share the cores with the API server and each other
            self.onnx = OnnxPredictor(source.onnx, presence_threshold=threshold_presence, spinning=False)
            return
        import torch

        from evf.batch import BatchBuilder
        from evf.demo.cli import load_model

        torch.set_grad_enabled(False)
        self.model, _ = load_model(source.ckpt_path, source.pretrained)
        self.builder = BatchBuilder(self.model.encoder.preprocessor, self.model.backend.info.image)
        self.dtype = torch.bfloat16 if source.precision == "bf16" else None

    def encode(self, image: np.ndarray) -> ImageState:
        if self.onnx is not None:
            return ImageState(*self.onnx.image_state(image))
        from evf.decode import image_features
        from evf.predictor import autocast_to

        inputs = self.builder.images([image])
        with autocast_to(inputs.encoder_pixels.device, self.dtype):
            features = image_features(self.model, inputs)
        return ImageState(
            {k: v.float().numpy() for k, v in features.items()},
            inputs.encoder_pixels.numpy(),
            tuple(inputs.input_sizes[0]),
            tuple(inputs.original_sizes[0]),
        )

    def segment(self, states: list[ImageState], prompts: list[list[Prompt]]) -> list[dict[str, np.ndarray]]:
        """Per image: ``logits`` ``[n,H,W]``, ``scores``, ``presence`` (probabilities), ``present``."""
        if self.onnx is not None:
            out = []
            for state, image_prompts in zip(states, prompts, strict=True):
                self.onnx.set_image_state(
                    state.features, state.encoder_pixels, state.input_size, state.original_size
                )
                p = self.onnx.predict(image_prompts)
                out.append(
                    {"logits": p.logits, "scores": p.scores, "presence": p.presence, "present": p.present}
                )
            return out
        import torch

        from evf.batch import ImageInputs
        from evf.decode import decode
        from evf.predictor import autocast_to

        images = ImageInputs(
            encoder_pixels=torch.from_numpy(np.concatenate([s.encoder_pixels for s in states])),
            input_sizes=[s.input_size for s in states],
            original_sizes=[s.original_size for s in states],
        )
        features = {
            k: torch.from_numpy(np.concatenate([s.features[k] for s in states])) for k in states[0].features
        }
        batch = self.builder.prompt_batch(images, prompts, [f"request {i}" for i in range(len(states))])
        with autocast_to(images.encoder_pixels.device, self.dtype):
            predictions = decode(
                self.model, batch, features=features, presence_threshold=self.presence_threshold
            )
        return [
            {"logits": p.logits.numpy(), "scores": p.scores.numpy(), "presence": p.presence.float().numpy(),
             "present": p.present.numpy()}
            for p in predictions
        ]  # fmt: skip


class ImagesAPI(ls.LitAPI):
    """``POST /images``: encode and cache; answers the image's id (its pixels' hash) and size."""

    def __init__(
        self, source: ModelSource, cache_dir: Path, cache_entries: int, presence_threshold: float
    ) -> None:
        super().__init__(api_path="/images")
        self.source, self.cache_dir, self.cache_entries = source, cache_dir, cache_entries
        self.presence_threshold = presence_threshold

    def setup(self, device: str) -> None:
        self.runtime = _Runtime(self.source, self.presence_threshold)
        self.cache = FeatureCache(self.cache_dir, self.cache_entries)

    def decode_request(self, request: ImageRequest) -> np.ndarray:
        return decode_image(request.image, "image")

    def predict(self, image: np.ndarray) -> dict[str, Any]:
        image_id = pixel_hash(image)
        cached = self.cache.get(image_id) is not None
        if not cached:
            self.cache.put(image_id, self.runtime.encode(image))
        return {"image_id": image_id, "width": image.shape[1], "height": image.shape[0], "cached": cached}

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


@dataclass
class _Job:
    image_id: str | None
    image: np.ndarray | None
    prompts: list[Prompt]
    threshold: float


class SegmentAPI(ls.LitAPI):
    """``POST /segment``: masks as COCO RLE with score and presence, for each prompt in order."""

    def __init__(
        self,
        source: ModelSource,
        cache_dir: Path,
        cache_entries: int,
        presence_threshold: float,
        max_batch_size: int,
        batch_timeout: float,
    ) -> None:
        super().__init__(  # the window is the loop's: LitServe's own would delay a lone request too
            api_path="/segment",
            max_batch_size=max_batch_size,
            batch_timeout=0,
            loop=QueuedBatchLoop(window=batch_timeout) if max_batch_size > 1 else "auto",
        )
        self.source, self.cache_dir, self.cache_entries = source, cache_dir, cache_entries
        self.presence_threshold = presence_threshold

    def setup(self, device: str) -> None:
        self.runtime = _Runtime(self.source, self.presence_threshold)
        self.cache = FeatureCache(self.cache_dir, self.cache_entries)

    def decode_request(self, request: SegmentRequest) -> _Job:
        image = None if request.image is None else decode_image(request.image, "image")
        prompts = [
            Prompt(p.text, tuple(p.points), tuple(p.point_labels), None if p.box is None else tuple(p.box))
            for p in request.prompts
        ]
        return _Job(request.image_id, image, prompts, request.threshold)

    def batch(self, jobs: list[_Job]) -> list[_Job]:
        return jobs

    def unbatch(self, outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return outputs

    def predict(self, jobs: list[_Job] | _Job) -> list[dict[str, Any]] | dict[str, Any]:
        single = isinstance(jobs, _Job)
        jobs = [jobs] if single else jobs
        states: list[ImageState | str] = []  # a str: why the image is not there
        ids = []
        for job in jobs:
            image_id = job.image_id if job.image is None else pixel_hash(job.image)
            state = self.cache.get(image_id)
            if state is None and job.image is None:  # evicted since validation: answered, not failed
                state = f"image_id {image_id!r} was evicted from the feature cache: upload it again"
            elif state is None:
                state = self.runtime.encode(job.image)
                self.cache.put(image_id, state)
            states.append(state)
            ids.append(image_id)
        results: list[dict[str, Any]] = [
            {"image_id": i, "error": s} for i, s in zip(ids, states, strict=True)
        ]
        ready = [k for k, state in enumerate(states) if isinstance(state, ImageState)]
        if ready:
            masks = self.runtime.segment([states[k] for k in ready], [jobs[k].prompts for k in ready])
            for k, out in zip(ready, masks, strict=True):
                results[k] = _answer(ids[k], jobs[k], out)
        return results[0] if single else results

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


def _answer(image_id: str, job: _Job, out: dict[str, np.ndarray]) -> dict[str, Any]:
    from evf.prediction import encode_rle

    masks = (out["logits"] > job.threshold) & out["present"][:, None, None]
    height, width = masks.shape[1:]
    return {
        "image_id": image_id,
        "width": int(width),
        "height": int(height),
        "masks": [
            {**prompt.record(), "rle": encode_rle(mask), "area": int(mask.sum()), "score": float(score),
             "presence": float(presence)}
            for prompt, mask, score, presence in zip(
                job.prompts, masks, out["scores"], out["presence"], strict=True
            )
        ],
    }  # fmt: skip


__all__ = ["ImagesAPI", "ModelSource", "SegmentAPI"]
