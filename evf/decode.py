"""The one path from a `Batch` to masks: image features -> prompt tokens -> mask decoder ->
logits at the original size (and, for a model with a presence head, whether each target is there).

Training (`EVFSAMModule.training_step`), validation and test, ``evf predict``,
`evf.predict_images` and `evf.Predictor` all call `decode`. It adds no autocast and no
``no_grad``: callers choose (training needs gradients; prediction runs under ``torch.no_grad`` and
an optional autocast).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from evf.batch import Batch, ImageInputs
from evf.model import EVFSAM
from evf.sam_backends import ImageFeatures


@dataclass
class Prediction:
    """Masks for the prompts of one image, at its original resolution.

    Attributes:
        logits: ``[n,H,W]`` float32 mask logits of the decoder (never gated by presence).
        masks: ``[n,H,W]`` bool, ``logits > threshold``, and empty where the target is absent
            (``presence < presence_threshold``).
        scores: ``[n]`` the decoder's predicted IoU of each mask.
        present: ``[n]`` bool, ``presence >= presence_threshold`` (all True without a presence head).
        presence_logits: ``[n]`` float32 logits that each prompt's target is in the image (``+inf``
            for a prompt without text: its points or box say where the target is); None for a
            model without a presence head, such as every released EVF-SAM checkpoint.
    """

    logits: torch.Tensor
    masks: torch.Tensor
    scores: torch.Tensor
    present: torch.Tensor
    presence_logits: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> Prediction:
        """The same prediction with every tensor on ``device``."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return Prediction(**{k: None if v is None else v.to(device) for k, v in moved.items()})

    @property
    def presence(self) -> torch.Tensor:
        """``[n]`` probability that each prompt's target is in the image: 1.0 for every prompt of a
        model without a presence head (it always answers with a mask)."""
        if self.presence_logits is None:
            return torch.ones_like(self.scores)
        return self.presence_logits.sigmoid()


def image_features(model: EVFSAM, inputs: Batch | ImageInputs) -> ImageFeatures:
    """The image features of a batch (or of `ImageInputs`): the store's rows (``image_features``), or
    the backend's image encoder run once per image over ``sam_pixels``."""
    if inputs.image_features is not None:
        return inputs.image_features
    if inputs.sam_pixels is None:
        raise ValueError("a batch needs sam_pixels or image_features")
    return model.encode_images(inputs.sam_pixels.to(_dtype(model.backend)))


def check_presence_threshold(value: float) -> float:
    """``value`` if it is a probability, else ValueError naming the field."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"presence_threshold must be in [0, 1], got {value}")
    return value


def decode(
    model: EVFSAM,
    batch: Batch,
    threshold: float = 0.0,
    features: ImageFeatures | None = None,
    presence_threshold: float = 0.5,
) -> list[Prediction]:
    """One `Prediction` per image of ``batch``.

    Args:
        model: the model.
        batch: images and prompts from `evf.batch.BatchBuilder`.
        threshold: logit threshold of the masks.
        features: this batch's image features when the caller already has them (`evf.Predictor`);
            otherwise `image_features`.
        presence_threshold: with a presence head, a prompt whose presence probability is below it
            gets an empty mask ("it isn't there"); without one it has no effect.
    """
    check_presence_threshold(presence_threshold)
    if batch.num_images == 0:
        return []
    if not batch.groups:  # images without prompts
        return [_empty(size, batch.encoder_pixels.device) for size in batch.original_sizes]
    features = image_features(model, batch) if features is None else features
    dtype = _dtype(model.backend.mask_decoder)  # e.g. bf16 store rows decode in the decoder's dtype
    features = {k: v.to(dtype) for k, v in features.items()}
    low_res, iou, presence_logits = _decode_groups(model, batch, features)
    present = torch.ones_like(iou, dtype=torch.bool)
    if presence_logits is not None:
        presence_logits = presence_logits.float()
        present = presence_logits.sigmoid() >= presence_threshold
    predictions = []
    for i, (input_size, original_size) in enumerate(
        zip(batch.input_sizes, batch.original_sizes, strict=True)
    ):
        rows = batch.image_index == i
        logits = model.backend.postprocess(low_res[rows].float(), tuple(input_size), tuple(original_size))
        prediction = Prediction(
            logits=logits,
            masks=(logits > threshold) & present[rows, None, None],
            scores=iou[rows].float(),
            present=present[rows],
            presence_logits=None if presence_logits is None else presence_logits[rows],
        )
        predictions.append(prediction)
    return predictions


def _decode_groups(
    model: EVFSAM, batch: Batch, features: ImageFeatures
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Low-res logits ``[N,1,h,w]``, predicted IoUs ``[N]`` and presence logits ``[N]`` (None
    without a presence head; ``+inf`` for prompts without text) of every prompt, in the batch's
    prompt order: the multimodal encoder once over every prompt with text, then one decoder call
    per group."""
    text_rows = torch.cat([g.rows for g in batch.groups if g.has_text] or [batch.image_index[:0]])
    tokens, presence_logits = None, None
    if model.has_presence:
        presence_logits = torch.full(batch.image_index.shape, float("inf"), device=batch.image_index.device)
    if len(text_rows):
        encoder_pixels = batch.encoder_pixels.to(_dtype(model.encoder))
        inputs = (batch.input_ids[text_rows], batch.attention_mask[text_rows], batch.image_index[text_rows])
        encoded = model.encode_prompts(encoder_pixels, *inputs)
        tokens = encoded.tokens
        if encoded.presence_logits is not None:
            presence_logits = presence_logits.to(encoded.presence_logits.dtype).index_put(
                (text_rows,), encoded.presence_logits
            )
    outputs, start = [], 0
    for group in batch.groups:
        group_tokens = None
        if group.has_text:  # text groups take consecutive slices of `tokens`, in group order
            group_tokens, start = tokens[start : start + len(group.rows)], start + len(group.rows)
        out = model.backend.decode(
            features, batch.image_index[group.rows], group_tokens, points=group.points, boxes=group.boxes
        )
        outputs.append((group.rows, out.logits, out.iou[:, 0]))
    if len(outputs) == 1:  # one group holds every prompt in order (e.g. a training batch)
        return outputs[0][1], outputs[0][2], presence_logits
    order = torch.cat([rows for rows, _, _ in outputs]).argsort()
    logits, iou = torch.cat([lg for _, lg, _ in outputs])[order], torch.cat([s for _, _, s in outputs])[order]
    return logits, iou, presence_logits


def _empty(size: tuple[int, int], device: torch.device) -> Prediction:
    logits = torch.zeros(0, *size, device=device)
    none = torch.zeros(0, dtype=torch.bool, device=device)
    return Prediction(logits=logits, masks=logits > 0, scores=torch.zeros(0, device=device), present=none)


def _dtype(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


__all__ = ["Prediction", "check_presence_threshold", "decode", "image_features"]
