"""`OnnxPredictor`: `evf.Predictor`'s interface over an ``evf export --format onnx`` directory, on
onnxruntime with numpy pre- and post-processing: torch is not imported.

The image is preprocessed (`evf.deploy.numpy_image`) and encoded once in `set_image`; `predict`
tokenises the expressions (the export's tokenizer files), runs the prompt encoder once over every
prompt with text and the geometry graph over every prompt with points or a box, puts each prompt's
sparse prompt together (geometry tokens, then the text token), decodes prompts with the same token
count together, and resizes the logits to the original image as the backend does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evf.deploy.geometry import compose
from evf.deploy.manifest import FORMAT, MANIFEST
from evf.deploy.numpy_image import postprocess, resized_size, transform_coords, transform_image
from evf.prompts import Prompt, as_prompts


@dataclass
class OnnxPrediction:
    """`evf.Prediction`'s fields as numpy arrays: ``logits`` ``[n,H,W]`` float32, ``masks`` bool,
    ``scores`` ``[n]`` (predicted IoU), ``present`` ``[n]`` bool, ``presence_logits`` ``[n]`` or None."""

    logits: np.ndarray
    masks: np.ndarray
    scores: np.ndarray
    present: np.ndarray
    presence_logits: np.ndarray | None = None

    @property
    def presence(self) -> np.ndarray:
        if self.presence_logits is None:
            return np.ones_like(self.scores)
        return 1.0 / (1.0 + np.exp(-self.presence_logits))


class OnnxPredictor:
    """Text, point, box and mixed prompts on one image at a time, from ONNX graphs.

    Args:
        directory: an ``evf export --format onnx`` directory (``deploy.json``, graphs, tokenizer).
        threshold: logit threshold of the masks.
        presence_threshold: with a presence head, a prompt less likely than this to be in the image
            gets an empty mask.
        providers: onnxruntime execution providers (default: CPU).
        threads: intra-op threads per graph (default: onnxruntime's).
        spinning: whether onnxruntime's intra-op threads spin-wait between calls (its default:
            the lowest latency for back-to-back calls of one process). `evf serve` turns it off:
            its workers share the cores with the API server and each other, and a spinning pool
            slowed other work on the machine about fourfold (benchmarks/serve.md).
    """

    def __init__(
        self,
        directory: str | Path,
        threshold: float = 0.0,
        presence_threshold: float = 0.5,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        threads: int | None = None,
        spinning: bool = True,
    ) -> None:
        import onnxruntime as ort

        self.directory = Path(directory)
        path = self.directory / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: an `evf export --format onnx` directory holds it")
        self.manifest: dict[str, Any] = json.loads(path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{path}: format {self.manifest.get('format')!r}, expected {FORMAT!r}")
        if not 0.0 <= presence_threshold <= 1.0:
            raise ValueError(f"presence_threshold must be in [0, 1], got {presence_threshold}")
        self.threshold, self.presence_threshold = threshold, presence_threshold
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.sessions = {
            name: ort.InferenceSession(
                str(self.directory / graph["file"]), options, providers=list(providers)
            )
            for name, graph in self.manifest["graphs"].items()
        }
        self.tokenizer = _load_tokenizer(self.directory)
        self.max_length = int(self.manifest["tokenizer"]["max_length"])
        self.family = self.manifest["family"]
        self.encoder_spec = self.manifest["preprocessing"]["encoder"]
        self.backend_spec = self.manifest["preprocessing"]["backend"]
        self.reset_image()

    @property
    def is_image_set(self) -> bool:
        return self._features is not None

    def reset_image(self) -> None:
        self._features: dict[str, np.ndarray] | None = None
        self._encoder_pixels: np.ndarray | None = None
        self._sizes: tuple[tuple[int, int], tuple[int, int]] | None = None

    def set_image(self, image: np.ndarray, features: dict[str, np.ndarray] | None = None) -> None:
        """Preprocess ``image`` (uint8 ``[H,W,3]`` RGB) and run the image encoder graph once, unless
        its ``features`` (one image's, with a leading dimension of 1) are given."""
        self.set_image_state(*self.image_state(image, features))

    def image_state(
        self, image: np.ndarray, features: dict[str, np.ndarray] | None = None
    ) -> tuple[dict[str, np.ndarray], np.ndarray, tuple[int, int], tuple[int, int]]:
        """What `set_image` keeps of ``image``: features, encoder pixels, input and original size
        (a server caches it, `set_image_state` takes it back)."""
        encoder_pixels = transform_image(self.encoder_spec, image)[None]
        if features is None:
            pixels = transform_image(self.backend_spec, image)[None]
            keys = self.manifest["feature_keys"]
            features = dict(
                zip(keys, self.sessions["image_encoder"].run(keys, {"pixels": pixels}), strict=True)
            )
        original = tuple(image.shape[:2])
        return features, encoder_pixels, resized_size(self.backend_spec, *original), original

    def set_image_state(
        self,
        features: dict[str, np.ndarray],
        encoder_pixels: np.ndarray,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> None:
        self._features, self._encoder_pixels = features, encoder_pixels
        self._sizes = (tuple(input_size), tuple(original_size))

    @property
    def features(self) -> dict[str, np.ndarray]:
        if self._features is None:
            raise RuntimeError("call set_image(image) before predict(prompts)")
        return self._features

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``input_ids`` / ``attention_mask`` ``[n,L]`` int64 as `evf`'s BEIT-3 tokenizer: ``<s> ... </s>``,
        at most ``max_length`` ids (longer ones keep their first ``max_length - 1`` and ``</s>``),
        right-padded."""
        ids = self.tokenizer(list(texts), add_special_tokens=True)["input_ids"]
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        ids = [x[: self.max_length - 1] + [eos] if len(x) > self.max_length else x for x in ids]
        length = max(len(x) for x in ids)
        input_ids = np.full((len(ids), length), pad, dtype=np.int64)
        mask = np.zeros((len(ids), length), dtype=np.int64)
        for row, x in enumerate(ids):
            input_ids[row, : len(x)], mask[row, : len(x)] = x, 1
        return input_ids, mask

    def predict(
        self,
        prompts: str | Prompt | Sequence[str | Prompt] | None,
        points: Sequence[np.ndarray] | np.ndarray | None = None,
        point_labels: Sequence[np.ndarray] | np.ndarray | None = None,
        boxes: np.ndarray | None = None,
    ) -> OnnxPrediction:
        """Masks for ``prompts`` on the current image, in order (the arguments of `evf.Predictor.predict`)."""
        features = self.features
        prompts = as_prompts(prompts, points, point_labels, boxes)
        (input_size, original_size), n = self._sizes, len(prompts)
        text_rows = [i for i, p in enumerate(prompts) if p.text is not None]
        text_tokens: dict[int, np.ndarray] = {}
        presence = np.full(n, np.inf, dtype=np.float32) if self.manifest["presence"] else None
        if text_rows:
            ids, mask = self.tokenize([prompts[i].text for i in text_rows])
            inputs = {"encoder_pixels": self._encoder_pixels, "input_ids": ids, "attention_mask": mask,
                      "image_index": np.zeros(len(text_rows), dtype=np.int64)}  # fmt: skip
            outputs = self.sessions["prompt_encoder"].run(None, inputs)
            text_tokens = dict(zip(text_rows, outputs[0], strict=True))
            if presence is not None:
                presence[text_rows] = outputs[1]
        sparse = [self._sparse(p, text_tokens.get(i), original_size) for i, p in enumerate(prompts)]
        low_res: list[np.ndarray | None] = [None] * n
        iou = np.zeros(n, dtype=np.float32)
        for count in sorted({len(s) for s in sparse}):
            rows = [i for i, s in enumerate(sparse) if len(s) == count]
            inputs = {**features, "image_index": np.zeros(len(rows), dtype=np.int64),
                      "sparse": np.stack([sparse[i] for i in rows]).astype(np.float32)}  # fmt: skip
            logits, scores = self.sessions["decoder"].run(["low_res_logits", "iou"], inputs)
            for k, row in enumerate(rows):
                low_res[row], iou[row] = logits[k], scores[k]
        logits = postprocess(self.family, self.backend_spec, np.stack(low_res), input_size, original_size)
        present = np.ones(n, dtype=bool)
        if presence is not None:
            present = 1.0 / (1.0 + np.exp(-presence)) >= self.presence_threshold
        return OnnxPrediction(
            logits, (logits > self.threshold) & present[:, None, None], iou, present, presence
        )

    def _sparse(
        self, prompt: Prompt, text_token: np.ndarray | None, original_size: tuple[int, int]
    ) -> np.ndarray:
        """``[T,C]``: the prompt's geometry tokens, then its text token."""
        points = (
            transform_coords(self.backend_spec, np.asarray(prompt.points), original_size)
            if prompt.points
            else None
        )
        box = (
            None
            if prompt.box is None
            else transform_coords(self.backend_spec, np.reshape(prompt.box, (2, 2)), original_size)
        )
        geometry = compose(
            self.family, points, np.asarray(prompt.point_labels), box, self.manifest["max_points"]
        )
        parts = []
        if geometry is not None:
            coords, labels = geometry
            parts.append(
                self.sessions["geometry"].run(None, {"coords": coords[None], "labels": labels[None]})[0][0]
            )
        if text_token is not None:
            parts.append(text_token)
        return np.concatenate(parts).astype(np.float32)


def _load_tokenizer(directory: Path) -> Any:
    """The export's tokenizer files, read as EVF-SAM reads a release's (XLM-R's sentencepiece)."""
    from transformers import XLMRobertaTokenizer

    return XLMRobertaTokenizer.from_pretrained(str(directory))


__all__ = ["OnnxPrediction", "OnnxPredictor"]
