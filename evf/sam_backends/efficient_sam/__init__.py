"""EfficientSAM ViT-T / ViT-S (Xiong et al., 2023) as EVF backends, implemented here.

* `modeling`: the modules (`EfficientSam`: ViT image encoder, points-only prompt encoder,
  two-way-transformer mask decoder), named as the official ``efficient_sam`` package names them.
* this file: the backend (`EfficientSamBackend`), the checkpoint format (`EFFICIENT_SAM`), the
  layout of EVF-Effi-SAM's releases (`RELEASE_LAYOUT`), the variant table and the registered
  factories ``efficient_sam_vitt``, ``efficient_sam_vits``, ``efficient_sam_tiny``.

As the released EVF-Effi-SAM (hustvl/EVF-SAM ``model/evf_effisam.py``): the text is one sparse token
(after any point/box tokens), there is no dense prompt, decoding is single-mask (mask token 0) and
the low-resolution logits are resized straight to the original size. Preprocessing is the two-step
resize of EVF-SAM's EfficientSAM data pipeline (``utils/dataset.py`` up to hustvl/EVF-SAM@7eee2aa):
``ResizeLongestSide(1024)`` (PIL bilinear), SAM's mean/std, then a bilinear stretch to 1024 x 1024.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from evf.checkpoint import CheckpointFormat, Rule
from evf.preprocessing import IMAGENET_MEAN, IMAGENET_STD, ImageSpec
from evf.sam_backends.base import (
    BACKENDS,
    UINT8_SQUARE_RESIZE,
    AbsentImageEncoder,
    BackendInfo,
    DecoderOutput,
    ImageFeatures,
    PointPrompts,
    ReleaseLayout,
    SamBackend,
    create_variant,
    load_backend_checkpoint,
)
from evf.sam_backends.efficient_sam.modeling import (
    EfficientSam,
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    TwoWayTransformer,
)


class EfficientSamBackend(SamBackend):
    """An `EfficientSam` behind the `SamBackend` interface.

    Args:
        sam: the model.
        info: its registry metadata.
        max_points: point tokens the decoder was trained with (upstream's
            ``decoder_max_num_input_points``): point/box prompts are padded to this many with
            invalid points, as upstream does.

    Features: ``{"image_embeddings": [B,C,S/16,S/16]}``.
    """

    core = "sam"

    def __init__(self, sam: EfficientSam, info: BackendInfo, max_points: int) -> None:
        super().__init__()
        self.sam = sam
        self.info = info
        self.max_points = max_points

    def decode(
        self,
        features: ImageFeatures,
        image_index: torch.Tensor,
        text_tokens: torch.Tensor | None,
        points: PointPrompts | None = None,
        boxes: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """Single-mask output (token 0): logits ``[N,1,S/4,S/4]``, IoU ``[N,1]``."""
        return self.decode_sparse(
            features, image_index, self._embed_prompts(len(image_index), text_tokens, points, boxes)
        )

    def decode_sparse(
        self, features: ImageFeatures, image_index: torch.Tensor, sparse: torch.Tensor
    ) -> DecoderOutput:
        image_pe = self.sam.prompt_encoder.get_dense_pe().to(sparse.dtype)
        masks, iou = self.sam.mask_decoder(features["image_embeddings"][image_index], image_pe, sparse)
        return DecoderOutput(logits=masks[:, :1], iou=iou[:, :1])

    def embed_geometry(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Upstream's prompt encoder on ``max_points`` padded points (the caller pads)."""
        return self.sam.prompt_encoder(coords, labels)

    def _embed_prompts(
        self,
        n: int,
        text_tokens: torch.Tensor | None,
        points: PointPrompts | None,
        boxes: torch.Tensor | None,
    ) -> torch.Tensor:
        """``[N,T,C]``: box corners (labels 2, 3) and points padded to ``max_points``, then the text."""
        tokens = [self.sam.mask_decoder.iou_token.weight.new_zeros(n, 0, self.prompt_dim)]
        coords, labels = [], []
        if boxes is not None:
            coords.append(boxes.reshape(-1, 2, 2))
            labels.append(torch.tensor([[2, 3]], device=boxes.device).expand(len(boxes), -1))
        if points is not None:
            coords.append(points.coords)
            labels.append(points.labels)
        if coords:
            padded = self._pad(torch.cat(coords, dim=1), torch.cat(labels, dim=1))
            tokens.append(self.sam.prompt_encoder(*padded).expand(n, -1, -1))
        if text_tokens is not None:
            tokens.append(text_tokens)
        return torch.cat([t.to(tokens[0].dtype) for t in tokens], dim=1)

    def _pad(self, coords: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Negative coordinates become -1 and the prompt is padded with (-1, -1) points of label -1,
        as upstream's ``EfficientSam.predict_masks``; more than ``max_points`` is an error (upstream
        silently drops the extra points)."""
        k = coords.shape[1]
        if k > self.max_points:
            raise ValueError(f"EfficientSAM takes at most {self.max_points} points (a box counts 2), got {k}")
        coords = torch.where(coords >= 0, coords, -1.0)
        coords = F.pad(coords, (0, 0, 0, self.max_points - k), value=-1.0)
        return coords, F.pad(labels, (0, self.max_points - k), value=-1)

    def postprocess(
        self, low_res_logits: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> torch.Tensor:
        """Bilinear resize straight to the original size (the input had no padding to crop)."""
        return F.interpolate(low_res_logits, tuple(original_size), mode="bilinear", align_corners=False)[:, 0]


# Official efficient_sam_vit{t,s}.pt: {"model": EfficientSam state dict}, keys exactly ours. Nothing
# is dropped (upstream's pixel_mean / pixel_std are non-persistent buffers, absent from the file).
EFFICIENT_SAM = CheckpointFormat(
    name="efficient_sam",
    rules=(Rule(r"((image_encoder|prompt_encoder|mask_decoder)\..+)", r"\1"),),
)

# EVF-Effi-SAM's releases (evf-effi-sam, evf-effi-sam-multitask) hold the official EfficientSam under
# visual_model.
RELEASE_LAYOUT = ReleaseLayout(
    architecture="EvfEffiSamModel",
    scales={"tiny": "efficient_sam_vitt", "small": "efficient_sam_vits"},
    format=EFFICIENT_SAM,
    export_rules=EFFICIENT_SAM.rules,  # the same keys both ways
    marker="prompt_encoder.invalid_points.weight",
    inference_image=UINT8_SQUARE_RESIZE,
)


def _build(
    *,
    image_size: int,
    patch_size: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    mlp_ratio: float,
    pretrain_img_size: int,
    prompt_dim: int,
    decoder_depth: int,
    decoder_mlp_dim: int,
    decoder_heads: int,
    upscaling_dims: tuple[int, ...],
    iou_head_depth: int,
    iou_hidden_dim: int,
    max_points: int,
    checkpoint: str | Path | None,
    image_encoder: bool = True,
) -> EfficientSamBackend:
    grid = image_size // patch_size
    encoder: nn.Module = AbsentImageEncoder()  # image_encoder=False: features come from a cache
    if image_encoder:
        encoder = ImageEncoderViT(
            image_size, patch_size, embed_dim, depth, num_heads, mlp_ratio, prompt_dim, pretrain_img_size
        )
    sam = EfficientSam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(prompt_dim, (grid, grid), (image_size, image_size)),
        mask_decoder=MaskDecoder(
            prompt_dim,
            TwoWayTransformer(decoder_depth, prompt_dim, decoder_heads, decoder_mlp_dim),
            num_multimask_outputs=3,
            iou_head_depth=iou_head_depth,
            iou_head_hidden_dim=iou_hidden_dim,
            upscaling_layer_dims=upscaling_dims,
        ),
    )
    backend = EfficientSamBackend(sam, _info(image_size, prompt_dim), max_points)
    if checkpoint is not None:
        load_backend_checkpoint(backend.sam, checkpoint, EFFICIENT_SAM)
    return backend


def _info(image_size: int, prompt_dim: int) -> BackendInfo:
    image = ImageSpec(
        size=image_size,
        mean=IMAGENET_MEAN,  # = SAM's (123.675, 116.28, 103.53) / 255, as EVF-SAM writes them
        std=IMAGENET_STD,
        pixel_scale=1.0,
        resize="longest_side_stretch",
        interpolation="bilinear",
        resampler="pil",
    )
    return BackendInfo(family="efficient_sam", image=image, prompt_dim=prompt_dim, release=RELEASE_LAYOUT)


# Upstream's build_efficient_sam: 1024 px, patch 16, 12 blocks, neck to 256, GELU everywhere; the
# IoU head gets `iou_head_depth - 1` = 2 hidden layers; point prompts padded to 6.
_EFFI_SAM = dict(
    image_size=1024, patch_size=16, depth=12, mlp_ratio=4.0, pretrain_img_size=224, prompt_dim=256,
    decoder_depth=2, decoder_mlp_dim=2048, decoder_heads=8, upscaling_dims=(64, 32), iou_head_depth=2,
    iou_hidden_dim=256, max_points=6,
)  # fmt: skip
VARIANTS: dict[str, dict] = {
    "efficient_sam_vitt": dict(_EFFI_SAM, embed_dim=192, num_heads=3),
    "efficient_sam_vits": dict(_EFFI_SAM, embed_dim=384, num_heads=6),
    # Tiny random-init EfficientSAM for tests: 128 px, width 32, 8x8 embedding grid.
    "efficient_sam_tiny": dict(
        image_size=128, patch_size=16, depth=2, mlp_ratio=4.0, pretrain_img_size=64, prompt_dim=32,
        embed_dim=32, num_heads=2, decoder_depth=2, decoder_mlp_dim=64, decoder_heads=2,
        upscaling_dims=(16, 8), iou_head_depth=2, iou_hidden_dim=32, max_points=6,
    ),
}  # fmt: skip

# Fixed per registered name, because the data side reads them from the registry metadata.
_NOT_OVERRIDABLE = {"image_size", "patch_size", "prompt_dim"}


def _create(name: str, checkpoint: str | Path | None, overrides: dict) -> EfficientSamBackend:
    return create_variant(name, VARIANTS[name], _build, checkpoint, overrides, fixed=_NOT_OVERRIDABLE)


@BACKENDS.register("efficient_sam_vitt", info=_info(1024, 256))
def efficient_sam_vitt(checkpoint: str | Path | None = None, **overrides) -> EfficientSamBackend:
    """EfficientSAM ViT-T; ``checkpoint``: path to ``efficient_sam_vitt.pt``."""
    return _create("efficient_sam_vitt", checkpoint, overrides)


@BACKENDS.register("efficient_sam_vits", info=_info(1024, 256))
def efficient_sam_vits(checkpoint: str | Path | None = None, **overrides) -> EfficientSamBackend:
    """EfficientSAM ViT-S; ``checkpoint``: path to ``efficient_sam_vits.pt`` (unzipped)."""
    return _create("efficient_sam_vits", checkpoint, overrides)


@BACKENDS.register("efficient_sam_tiny", info=_info(128, 32))
def efficient_sam_tiny(checkpoint: str | Path | None = None, **overrides) -> EfficientSamBackend:
    """Tiny random-init EfficientSAM (128 px, width 32) for tests."""
    return _create("efficient_sam_tiny", checkpoint, overrides)
