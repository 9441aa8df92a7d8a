"""SAM 2 and SAM 2.1 (package ``sam2``) as EVF backends: the image path only.

We build sam2's own modules unchanged (Hiera trunk + FPN neck, ``PromptEncoder``, ``MaskDecoder``)
and leave the video-memory modules out: EVF works on single images, where SAM 2 adds the learned
``no_mem_embed`` to the lowest-resolution features instead of running memory attention
(``SAM2ImagePredictor.set_image``). Official checkpoints still load strictly, by the rules in
`evf.sam_backends.sam2_checkpoints`. sam2's modules and the variant tables are built in
`evf.sam_backends.sam2_build`, which also gives the sam2 config of each variant's full video model
(`video_config`; `evf.video.tracker`). This module assembles them and registers the variants.

Features (`Sam2Backend.encode_image`), for an S x S input: the three FPN levels after
``scalp=1`` (strides 4, 8, 16), ``no_mem_embed`` added to the stride-16 level. The mask decoder's
``conv_s0`` / ``conv_s1`` projections of the two high-resolution levels (which ``SAM2Base.forward_image``
applies inside the image path) run in `Sam2Backend.decode`, because they are mask-decoder weights and
EVF-SAM2 trains them with the decoder.

Decoding is EVF-SAM2's: the projected text is one more sparse token after the point/box tokens, the
dense prompt is ``no_mask_embed``, the decoder runs with ``multimask_output=True`` and the mask with
the highest predicted IoU is kept. Preprocessing is EVF-SAM2's data pipeline: a PIL bilinear resize
to S x S (no padding), then ImageNet mean/std on [0, 1] pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sam2.modeling.backbones.image_encoder import ImageEncoder
from torch import nn
from torch.nn.init import trunc_normal_

from evf.sam_backends.base import (
    BACKENDS,
    AbsentImageEncoder,
    BackendInfo,
    DecoderOutput,
    ImageFeatures,
    PointPrompts,
    SamBackend,
    create_variant,
    load_backend_checkpoint,
)
from evf.sam_backends.sam2_build import VARIANTS, backend_info, image_backbone, sam_heads
from evf.sam_backends.sam2_checkpoints import SAM2_CHECKPOINT


class Sam2ImageEncoder(nn.Module):
    """sam2's ``ImageEncoder`` (Hiera + FPN, ``scalp=1``) plus ``no_mem_embed``: pixels -> features.

    Args:
        backbone: the ``sam2.modeling.backbones.image_encoder.ImageEncoder``.
        dim: its output width (the neck's ``d_model``).
    """

    def __init__(self, backbone: ImageEncoder, dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        # What SAM 2 adds to a frame's features when there are no memories (every single image).
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, dim))
        trunc_normal_(self.no_mem_embed, std=0.02)

    def forward(self, pixels: torch.Tensor) -> ImageFeatures:
        """``[B,3,S,S]`` -> ``image_embed [B,C,S/16,S/16]``, ``high_res_s4 [B,C,S/4,S/4]``,
        ``high_res_s8 [B,C,S/8,S/8]`` (C = ``dim``)."""
        s4, s8, s16 = self.backbone(pixels)["backbone_fpn"]
        return {
            "image_embed": s16 + self.no_mem_embed.view(1, -1, 1, 1),
            "high_res_s4": s4,
            "high_res_s8": s8,
        }


class Sam2Backend(SamBackend):
    """SAM 2's image path behind the `SamBackend` interface.

    ``sam2`` holds ``image_encoder`` (`Sam2ImageEncoder`), ``prompt_encoder`` and ``mask_decoder``
    (sam2's modules). Features: the three levels of `Sam2ImageEncoder.forward`, one row per image.
    All expressions of all images decode in one mask-decoder call.
    """

    core = "sam2"

    def __init__(self, sam2: nn.ModuleDict, info: BackendInfo, variant: str | None = None) -> None:
        super().__init__()
        self.sam2 = sam2
        self.info = info
        self.variant = variant  # the registered name; `video_config` builds its video model

    def feature_shapes(self) -> dict[str, tuple[int, ...]]:
        h, w = self.sam2.prompt_encoder.image_embedding_size  # stride 16
        c = self.prompt_dim
        return {"image_embed": (c, h, w), "high_res_s4": (c, 4 * h, 4 * w), "high_res_s8": (c, 2 * h, 2 * w)}

    def decode(
        self,
        features: ImageFeatures,
        image_index: torch.Tensor,
        text_tokens: torch.Tensor | None,
        points: PointPrompts | None = None,
        boxes: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """Three candidate masks per expression; returns the one with the highest predicted IoU.

        Logits are ``[N,1,S/4,S/4]``, IoU ``[N,1]``.
        """
        sparse, _ = self._embed_prompts(len(image_index), text_tokens, points, boxes)
        return self.decode_sparse(features, image_index, sparse)

    def decode_sparse(
        self, features: ImageFeatures, image_index: torch.Tensor, sparse: torch.Tensor
    ) -> DecoderOutput:
        dec = self.sam2.mask_decoder
        embeddings = features["image_embed"]
        no_mask = self.sam2.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).to(embeddings.dtype)
        dense = no_mask.expand(image_index.shape[0], -1, *embeddings.shape[-2:])
        # Per image, before the gather (as SAM2Base.forward_image), but here so that they train with
        # the decoder: encode_image runs without autograd while the image encoder is frozen.
        high_res = [dec.conv_s0(features["high_res_s4"]), dec.conv_s1(features["high_res_s8"])]
        masks, iou, _, _ = dec(
            image_embeddings=features["image_embed"][image_index],
            image_pe=self.sam2.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse.to(embeddings.dtype),
            dense_prompt_embeddings=dense,
            multimask_output=True,
            repeat_image=False,
            high_res_features=[level[image_index] for level in high_res],
        )
        best = iou.argmax(dim=1, keepdim=True)
        logits = masks.gather(1, best[:, :, None, None].expand(-1, -1, *masks.shape[-2:]))
        return DecoderOutput(logits=logits, iou=iou.gather(1, best))

    def embed_geometry(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """sam2's ``_embed_points`` (it takes box corners as labels 2 and 3), its padding point left
        to the caller."""
        return self.sam2.prompt_encoder._embed_points(coords, labels, pad=False)

    def _embed_prompts(
        self,
        n: int,
        text_tokens: torch.Tensor | None,
        points: PointPrompts | None,
        boxes: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse ``[N,T,C]`` and dense ``[N,C,h,w]`` prompts, as ``SAM2ImagePredictor._predict``:
        box corners (labels 2, 3) first, then points, then sam2's padding point; then the text."""
        coords, labels = [], []
        if boxes is not None:
            coords.append(boxes.reshape(-1, 2, 2))
            labels.append(torch.tensor([[2, 3]], device=boxes.device).expand(len(boxes), -1))
        if points is not None:
            coords.append(points.coords)
            labels.append(points.labels)
        point_args = (torch.cat(coords, dim=1), torch.cat(labels, dim=1)) if coords else None
        sparse, dense = self.sam2.prompt_encoder(points=point_args, boxes=None, masks=None)
        sparse, dense = sparse.expand(n, -1, -1), dense.expand(n, -1, -1, -1)
        if text_tokens is not None:
            sparse = torch.cat([sparse, text_tokens.to(sparse.dtype)], dim=1)
        return sparse, dense

    def postprocess(
        self, low_res_logits: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> torch.Tensor:
        """Bilinear resize to the original size, as ``SAM2Transforms.postprocess_masks`` (no padding
        to crop: the input is the whole image stretched)."""
        return F.interpolate(low_res_logits, tuple(original_size), mode="bilinear", align_corners=False)[:, 0]


def _build(
    *,
    image_size: int,
    prompt_dim: int,
    checkpoint: str | Path | None,
    image_encoder: bool = True,
    drop_path_rate: float = 0.0,
    **hiera: Any,
) -> Sam2Backend:
    encoder: nn.Module = AbsentImageEncoder()  # image_encoder=False: features come from a cache
    if image_encoder:
        backbone = image_backbone(prompt_dim=prompt_dim, drop_path_rate=drop_path_rate, **hiera)
        encoder = Sam2ImageEncoder(backbone, prompt_dim)
    prompt_encoder, mask_decoder = sam_heads(image_size, prompt_dim)
    sam2 = nn.ModuleDict(
        {"image_encoder": encoder, "prompt_encoder": prompt_encoder, "mask_decoder": mask_decoder}
    )
    backend = Sam2Backend(sam2, backend_info(image_size, prompt_dim))
    if checkpoint is not None:
        load_backend_checkpoint(backend.sam2, checkpoint, SAM2_CHECKPOINT)
    return backend


# Fixed per registered name, because the data side reads them from the registry metadata.
_NOT_OVERRIDABLE = {"image_size", "prompt_dim"}


def _create(name: str, checkpoint: str | Path | None, overrides: dict) -> Sam2Backend:
    backend = create_variant(
        name, VARIANTS[name], _build, checkpoint, overrides, fixed=_NOT_OVERRIDABLE, extra={"drop_path_rate"}
    )
    backend.variant = name
    return backend


_FULL = backend_info(1024, 256)


@BACKENDS.register("sam2_hiera_t", info=_FULL)
def sam2_hiera_t(checkpoint: str | Path | None = None, **overrides) -> Sam2Backend:
    """SAM 2 Hiera-T; ``checkpoint``: path to ``sam2_hiera_tiny.pt``."""
    return _create("sam2_hiera_t", checkpoint, overrides)


@BACKENDS.register("sam2_hiera_s", info=_FULL)
def sam2_hiera_s(checkpoint: str | Path | None = None, **overrides) -> Sam2Backend:
    """SAM 2 Hiera-S; ``checkpoint``: path to ``sam2_hiera_small.pt``."""
    return _create("sam2_hiera_s", checkpoint, overrides)


@BACKENDS.register("sam2_hiera_b+", info=_FULL)
def sam2_hiera_b_plus(checkpoint: str | Path | None = None, **overrides) -> Sam2Backend:
    """SAM 2 Hiera-B+; ``checkpoint``: path to ``sam2_hiera_base_plus.pt``."""
    return _create("sam2_hiera_b+", checkpoint, overrides)


@BACKENDS.register("sam2_hiera_l", info=_FULL)
def sam2_hiera_l(checkpoint: str | Path | None = None, **overrides) -> Sam2Backend:
    """SAM 2 Hiera-L; ``checkpoint``: path to ``sam2_hiera_large.pt``."""
    return _create("sam2_hiera_l", checkpoint, overrides)


@BACKENDS.register("sam2.1_hiera_t", info=_FULL)
def sam2_1_hiera_t(checkpoint: str | Path | None = None, **overrides) -> Sam2Backend:
    """SAM 2.1 Hiera-T; ``checkpoint``: path to ``sam2.1_hiera_tiny.pt``."""
    return _create("sam2.1_hiera_t", checkpoint, overrides)


@BACKENDS.register("sam2.1_hiera_s", info=_FULL)
def sam2_1_hiera_s(checkpoint: str | Path | None = None, **overrides) -> Sam2Backend:
    """SAM 2.1 Hiera-S; ``checkpoint``: path to ``sam2.1_hiera_small.pt``."""
    return _create("sam2.1_hiera_s", checkpoint, overrides)


@BACKENDS.register("sam2.1_hiera_b+", info=_FULL)
def sam2_1_hiera_b_plus(checkpoint: str | Path | None = None, **overrides) -> Sam2Backend:
    """SAM 2.1 Hiera-B+; ``checkpoint``: path to ``sam2.1_hiera_base_plus.pt``."""
    return _create("sam2.1_hiera_b+", checkpoint, overrides)


@BACKENDS.register("sam2.1_hiera_l", info=_FULL)
def sam2_1_hiera_l(checkpoint: str | Path | None = None, **overrides) -> Sam2Backend:
    """SAM 2.1 Hiera-L; ``checkpoint``: path to ``sam2.1_hiera_large.pt``."""
    return _create("sam2.1_hiera_l", checkpoint, overrides)


@BACKENDS.register("sam2_tiny", info=backend_info(128, 32))
def sam2_tiny(checkpoint: str | Path | None = None, **overrides) -> Sam2Backend:
    """Tiny random-init SAM 2 (128 px, width 32) for tests."""
    return _create("sam2_tiny", checkpoint, overrides)
