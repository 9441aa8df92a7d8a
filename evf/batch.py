"""The typed batch and the one place that builds it: images and prompts -> model inputs.

`BatchBuilder` is the only code that tokenises expressions, transforms images for the encoder and
the backend, and maps point/box prompts into the backend's input frame. Training, evaluation,
``evf predict``, `evf.predict_images` and `evf.Predictor` all hand it their images and prompts and
pass the `Batch` it returns to the decode path (`evf.decode`).

Image features come from exactly one source per batch, chosen when the builder is made: the
backend's image encoder (the batch carries ``sam_pixels``) or an embedding store (the batch carries
``image_features`` read by each image's pixel hash, `evf.cache`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

import numpy as np
import torch

from evf.cache.keys import pixel_hash
from evf.cache.store import EmbeddingStore
from evf.encoders import EncoderPreprocessor
from evf.preprocessing import ImageSpec, check_rgb_uint8
from evf.prompts import Prompt
from evf.sam_backends import ImageFeatures, PointPrompts


@dataclass
class PromptGroup:
    """Prompts of one kind (`Prompt.kind`), decoded in one mask-decoder call.

    Attributes:
        rows: ``[n]`` positions of the group's prompts among the batch's ``N``.
        has_text: whether the prompts carry text (the projected text token joins the decoder).
        points: point prompts in the backend's input frame (``[n,K,2]``, labels ``[n,K]``), or None.
        boxes: ``[n,4]`` boxes (x0, y0, x1, y1) in the backend's input frame, or None.
    """

    rows: torch.Tensor
    has_text: bool = True
    points: PointPrompts | None = None
    boxes: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> PromptGroup:
        points = self.points
        if points is not None:
            points = PointPrompts(points.coords.to(device), points.labels.to(device))
        boxes = None if self.boxes is None else self.boxes.to(device)
        return replace(self, rows=self.rows.to(device), points=points, boxes=boxes)


@dataclass
class ImageInputs:
    """The image side of a batch: what `BatchBuilder.images` computes once per image."""

    encoder_pixels: torch.Tensor  # [B,3,E,E]
    input_sizes: list[tuple[int, int]]  # size of the content in the backend input
    original_sizes: list[tuple[int, int]]
    sam_pixels: torch.Tensor | None = None  # [B,3,S,S]; None when features come from a store
    image_features: ImageFeatures | None = None  # each [B,*shape]


@dataclass
class Batch:
    """B images and their N prompts, ready for the model (docs/architecture.md, "The batch contract").

    Exactly one of ``sam_pixels`` / ``image_features`` is set. ``groups`` partitions the N prompts
    by kind; a training batch (expressions only) has a single text group.
    """

    encoder_pixels: torch.Tensor  # [B,3,E,E]
    input_ids: torch.Tensor  # [N,L]
    attention_mask: torch.Tensor  # [N,L]
    image_index: torch.Tensor  # [N]
    groups: list[PromptGroup]
    input_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]
    texts: list[str]  # what was tokenised ("" for a prompt without text)
    image_ids: list[str]
    kinds: list[str] = field(default_factory=list)  # per expression, e.g. shapes' colour/shape/...
    sam_pixels: torch.Tensor | None = None
    image_features: ImageFeatures | None = None
    masks: list[torch.Tensor] | None = None  # per image [n_i,H_i,W_i] bool ground truth
    void: list[torch.Tensor | None] | None = None  # per image [H_i,W_i] bool: judged by no loss or metric
    images: list[np.ndarray] | None = None  # prediction: the originals, for overlays
    prompts: list[tuple[Prompt, ...]] | None = None  # per image, when built from `Prompt` s
    failures: list[dict[str, str]] = field(default_factory=list)  # images that could not be read

    @property
    def num_images(self) -> int:
        return len(self.original_sizes)

    def to(self, device: torch.device | str) -> Batch:
        """A copy with every tensor on ``device``. Lightning moves batches with it: its
        ``move_data_to_device`` calls the ``.to`` of any object that has one."""
        moved: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                moved[f.name] = value.to(device)
        if self.image_features is not None:
            moved["image_features"] = {k: v.to(device) for k, v in self.image_features.items()}
        if self.masks is not None:
            moved["masks"] = [m.to(device) for m in self.masks]
        if self.void is not None:
            moved["void"] = [None if v is None else v.to(device) for v in self.void]
        moved["groups"] = [g.to(device) for g in self.groups]
        return replace(self, **moved)


class ReferringSample(Protocol):
    """What `BatchBuilder` reads of a dataset sample (`evf.datamodules.sample.Sample` is one; typed
    structurally so that the batch, which the datamodules use, does not import them)."""

    image: np.ndarray  # uint8 [H,W,3]
    masks: np.ndarray | None  # bool [n,H,W]
    texts: list[str]
    image_id: str
    kinds: list[str]
    void: np.ndarray | None  # bool [H,W] pixels judged by no loss or metric


class BatchBuilder:
    """Collate function and predictor front end: images + prompts -> `Batch`.

    Runs in DataLoader workers; holds only picklable preprocessing (tokenizer, image specs) and,
    with an embedding cache, the store.

    Args:
        encoder: the encoder's tokenizer and image transform.
        backend_image: the backend's image preprocessing.
        features: an embedding store: batches then carry its ``image_features`` instead of pixels.
    """

    def __init__(
        self,
        encoder: EncoderPreprocessor,
        backend_image: ImageSpec,
        features: EmbeddingStore | None = None,
    ) -> None:
        self.encoder = encoder
        self.backend_image = backend_image
        self.features = features

    def __call__(self, samples: Sequence[ReferringSample]) -> Batch:
        """Training / evaluation samples (`evf.datamodules.sample.Sample`) -> a batch of their
        expressions, with their ground-truth masks when every sample has them."""
        ids = [s.image_id for s in samples]
        images = self.images([s.image for s in samples], ids)
        batch = self.text_batch(images, [list(s.texts) for s in samples], ids)
        batch.kinds = [k for s in samples for k in (s.kinds or [""] * len(s.texts))]
        if samples and all(s.masks is not None for s in samples):
            batch.masks = [torch.from_numpy(np.ascontiguousarray(s.masks)) for s in samples]
        if any(s.void is not None for s in samples):
            batch.void = [None if s.void is None else torch.from_numpy(s.void.copy()) for s in samples]
        return batch

    def images(
        self, images: Sequence[np.ndarray], image_ids: Sequence[str] = (), backend_pixels: bool = True
    ) -> ImageInputs:
        """The image side of a batch: encoder pixels, and backend pixels or stored features
        (neither with ``backend_pixels=False``: the caller has the features)."""
        for image in images:
            check_rgb_uint8(image)
        encoder_size = self.encoder.image.size
        out = ImageInputs(
            encoder_pixels=_stack(
                [self.encoder.transform_image(im) for im in images], (3, encoder_size, encoder_size)
            ),
            input_sizes=[self.backend_image.resized_size(*im.shape[:2]) for im in images],
            original_sizes=[tuple(im.shape[:2]) for im in images],
        )
        if not backend_pixels:
            return out
        if self.features is None:
            size = self.backend_image.size
            out.sam_pixels = _stack([self.backend_image(im) for im in images], (3, size, size))
        else:
            ids = list(image_ids) or [f"image {i}" for i in range(len(images))]
            rows = [self.features.read(pixel_hash(im), name) for im, name in zip(images, ids, strict=True)]
            out.image_features = {k: torch.stack([r[k] for r in rows]) for k in rows[0]} if rows else {}
        return out

    def text_batch(
        self, images: ImageInputs, texts: Sequence[Sequence[str]], image_ids: Sequence[str]
    ) -> Batch:
        """Expressions only, per image: one text group over all of them."""
        flat = [t for per_image in texts for t in per_image]
        batch = self._batch(images, flat, [len(t) for t in texts], image_ids)
        batch.groups = [PromptGroup(torch.arange(len(flat)))] if flat else []
        return batch

    def prompt_batch(
        self, images: ImageInputs, prompts: Sequence[Sequence[Prompt]], image_ids: Sequence[str]
    ) -> Batch:
        """`Prompt` s per image (text, points, boxes or a mix) -> a batch grouped by prompt kind, with
        points and boxes mapped into the backend's input frame."""
        flat = [(i, p) for i, per_image in enumerate(prompts) for p in per_image]
        texts = [p.text or "" for _, p in flat]
        batch = self._batch(images, texts, [len(p) for p in prompts], image_ids)
        batch.prompts = [tuple(p) for p in prompts]
        rows_by_kind: dict[tuple[bool, bool, int], list[int]] = {}
        for row, (_, p) in enumerate(flat):
            rows_by_kind.setdefault(p.kind, []).append(row)
        batch.groups = [
            self._group(rows, [flat[r] for r in rows], images.original_sizes)
            for rows in rows_by_kind.values()
        ]
        return batch

    def _batch(
        self, images: ImageInputs, texts: list[str], counts: list[int], image_ids: Sequence[str]
    ) -> Batch:
        tokens = self.encoder.tokenize(texts) if texts else _no_tokens()
        return Batch(
            encoder_pixels=images.encoder_pixels,
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            image_index=torch.repeat_interleave(
                torch.arange(len(counts)), torch.tensor(counts, dtype=torch.long)
            ),
            groups=[],
            input_sizes=list(images.input_sizes),
            original_sizes=list(images.original_sizes),
            texts=texts,
            image_ids=list(image_ids),
            sam_pixels=images.sam_pixels,
            image_features=images.image_features,
        )

    def _group(
        self, rows: list[int], prompts: list[tuple[int, Prompt]], sizes: Sequence[tuple[int, int]]
    ) -> PromptGroup:
        first = prompts[0][1]
        points = boxes = None
        if first.points:
            coords = torch.stack([self._coords(p.points, sizes[i]) for i, p in prompts])
            labels = torch.tensor([p.point_labels for _, p in prompts], dtype=torch.long)
            points = PointPrompts(coords, labels)
        if first.box is not None:
            corners = [self._coords(np.reshape(p.box, (2, 2)), sizes[i]).reshape(4) for i, p in prompts]
            boxes = torch.stack(corners)
        return PromptGroup(torch.tensor(rows, dtype=torch.long), first.text is not None, points, boxes)

    def _coords(self, xy: Any, original_size: tuple[int, int]) -> torch.Tensor:
        coords = torch.as_tensor(np.asarray(xy, dtype=np.float32).reshape(-1, 2))
        return self.backend_image.transform_coords(coords, original_size)


def _stack(tensors: list[torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    return torch.stack(tensors) if tensors else torch.zeros(0, *shape)


def _no_tokens() -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.zeros(0, 0, dtype=torch.long),
        "attention_mask": torch.zeros(0, 0, dtype=torch.long),
    }


__all__ = ["Batch", "BatchBuilder", "ImageInputs", "PromptGroup"]
