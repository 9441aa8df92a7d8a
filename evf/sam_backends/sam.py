"""SAM ViT-B/L/H (package ``segment-anything``) as an EVF backend.

We wrap upstream's modules unchanged and add the text as one more sparse prompt token from the
outside. Preprocessing is the official one: ``ResizeLongestSide`` (PIL bilinear on uint8), SAM's
pixel mean/std on 0..255, zero padding bottom/right to 1024. Every factory takes
``image_encoder=False`` to build no image encoder (features then come from an embedding cache).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn

from evf.checkpoint import CheckpointFormat, Rule
from evf.preprocessing import ImageSpec
from evf.sam_backends.base import (
    BACKENDS,
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

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


class SamViTBackend(SamBackend):
    """A ``segment_anything.modeling.Sam`` behind the `SamBackend` interface.

    Decoding is single-mask (``multimask_output=False``, mask token 0) as EVF-SAM does it, batched
    over all expressions of all images in one mask-decoder call. Features: ``{"image_embeddings":
    [B,C,S/16,S/16]}``.
    """

    core = "sam"

    def __init__(self, sam: Sam, info: BackendInfo) -> None:
        super().__init__()
        self.sam = sam
        self.info = info

    def decode(
        self,
        features: ImageFeatures,
        image_index: torch.Tensor,
        text_tokens: torch.Tensor | None,
        points: PointPrompts | None = None,
        boxes: torch.Tensor | None = None,
    ) -> DecoderOutput:
        sparse, _ = self._embed_prompts(len(image_index), text_tokens, points, boxes)
        return self.decode_sparse(features, image_index, sparse)

    def decode_sparse(
        self, features: ImageFeatures, image_index: torch.Tensor, sparse: torch.Tensor
    ) -> DecoderOutput:
        embeddings = features["image_embeddings"][image_index]
        no_mask = self.sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).to(embeddings.dtype)
        dense = no_mask.expand(image_index.shape[0], -1, *embeddings.shape[-2:])
        logits, iou = self.predict_masks(embeddings, sparse.to(embeddings.dtype), dense)
        return DecoderOutput(logits=logits[:, :1], iou=iou[:, :1])

    def embed_geometry(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """As upstream's ``_embed_points`` (labels -1, 0, 1) and ``_embed_boxes`` (2, 3: corner
        embeddings) in one pass, as segment-anything's ``SamOnnxModel._embed_points``."""
        encoder = self.sam.prompt_encoder
        pe = encoder.pe_layer.forward_with_coords(coords + 0.5, encoder.input_image_size)
        labels = labels[..., None]
        pe = torch.where(labels == -1, 0.0, pe) + (labels == -1) * encoder.not_a_point_embed.weight
        for i, embedding in enumerate(encoder.point_embeddings):
            pe = pe + (labels == i) * embedding.weight
        return pe

    def _embed_prompts(
        self,
        n: int,
        text_tokens: torch.Tensor | None,
        points: PointPrompts | None,
        boxes: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse ``[N,T,C]`` (points, boxes, then text) and dense ``[N,C,h,w]`` (no-mask) prompts."""
        point_args = None if points is None else (points.coords, points.labels)
        sparse, dense = self.sam.prompt_encoder(points=point_args, boxes=boxes, masks=None)
        sparse, dense = sparse.expand(n, -1, -1), dense.expand(n, -1, -1, -1)
        if text_tokens is not None:
            sparse = torch.cat([sparse, text_tokens.to(sparse.dtype)], dim=1)
        return sparse, dense

    def predict_masks(
        self, embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Upstream ``MaskDecoder.predict_masks``, but with image embeddings already gathered per
        expression (``[N,C,h,w]``), so expressions of different images decode in one call.

        Returns every mask token's logits ``[N,4,h,w]`` (token 0: single-mask output; 1-3: the
        multimask outputs) and predicted IoUs ``[N,4]`` (`evf.tools.pretrain_sam` trains them all).
        """
        dec = self.sam.mask_decoder
        output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1), sparse], dim=1)
        src = embeddings + dense
        pos_src = self.sam.prompt_encoder.get_dense_pe().to(src.dtype).expand_as(src)
        b, c, h, w = src.shape
        hs, src = dec.transformer(src, pos_src, tokens)
        iou_token_out, mask_tokens_out = hs[:, 0], hs[:, 1 : 1 + dec.num_mask_tokens]
        upscaled = dec.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1
        )
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
        return masks, dec.iou_prediction_head(iou_token_out)

    def postprocess(
        self, low_res_logits: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> torch.Tensor:
        """Upsample to the padded input, crop the padding, resize to the original size (as upstream)."""
        size = self.info.image.size
        x = F.interpolate(low_res_logits, (size, size), mode="bilinear", align_corners=False)
        x = x[..., : input_size[0], : input_size[1]]
        x = F.interpolate(x, tuple(original_size), mode="bilinear", align_corners=False)
        return x[:, 0]


# Official checkpoints (sam_vit_{b,l,h}_*.pth) are a flat state dict with exactly our Sam's keys.
SEGMENT_ANYTHING = CheckpointFormat(
    name="segment_anything",
    rules=(Rule(r"((image_encoder|prompt_encoder|mask_decoder)\..+)", r"\1"),),
)

# EVF-SAM's releases (evf-sam, evf-sam-multitask) hold the official Sam under visual_model.
RELEASE_LAYOUT = ReleaseLayout(
    architecture="EvfSamModel",
    scales={"huge": "sam_vit_h"},
    format=SEGMENT_ANYTHING,
    export_rules=SEGMENT_ANYTHING.rules,  # the same keys both ways
    marker="prompt_encoder.no_mask_embed.weight",
)


def _build(
    *,
    image_size: int,
    patch_size: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    global_attn_indexes: tuple[int, ...],
    window_size: int,
    prompt_dim: int,
    decoder_mlp_dim: int,
    decoder_heads: int,
    iou_hidden_dim: int,
    checkpoint: str | Path | None,
    image_encoder: bool = True,
) -> SamViTBackend:
    grid = image_size // patch_size
    encoder: nn.Module = AbsentImageEncoder()  # image_encoder=False: features come from a cache
    if image_encoder:
        encoder = ImageEncoderViT(
            img_size=image_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=4,
            out_chans=prompt_dim,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=window_size,
            global_attn_indexes=global_attn_indexes,
        )
    sam = Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=prompt_dim, mlp_dim=decoder_mlp_dim, num_heads=decoder_heads
            ),
            transformer_dim=prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=iou_hidden_dim,
        ),
        pixel_mean=list(SAM_PIXEL_MEAN),
        pixel_std=list(SAM_PIXEL_STD),
    )
    backend = SamViTBackend(sam, _info(image_size, prompt_dim))
    if checkpoint is not None:
        load_backend_checkpoint(backend.sam, checkpoint, SEGMENT_ANYTHING)
    return backend


def _info(image_size: int, prompt_dim: int) -> BackendInfo:
    image = ImageSpec(
        size=image_size,
        mean=SAM_PIXEL_MEAN,
        std=SAM_PIXEL_STD,
        pixel_scale=255.0,
        resize="longest_side_pad",
        interpolation="bilinear",  # torchvision's resize of a PIL image, as ResizeLongestSide calls it
        resampler="pil",
    )
    return BackendInfo(family="sam", image=image, prompt_dim=prompt_dim, release=RELEASE_LAYOUT)


_SAM_DECODER = dict(prompt_dim=256, decoder_mlp_dim=2048, decoder_heads=8, iou_hidden_dim=256)
_SAM_IMAGE = dict(image_size=1024, patch_size=16, window_size=14)
VARIANTS: dict[str, dict] = {
    "sam_vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "sam_vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "sam_vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}
for _name in VARIANTS:
    VARIANTS[_name].update(_SAM_IMAGE, **_SAM_DECODER)
# Tiny random-init SAM for tests and the CPU quickstart: 128 px input, 16x16 embedding grid.
VARIANTS["sam_tiny"] = dict(
    image_size=128, patch_size=8, window_size=4, embed_dim=64, depth=2, num_heads=2,
    global_attn_indexes=(1,), prompt_dim=64, decoder_mlp_dim=256, decoder_heads=4, iou_hidden_dim=64,
)  # fmt: skip


# Fixed per registered name, because the data side reads them from the registry metadata.
_NOT_OVERRIDABLE = {"image_size", "patch_size", "prompt_dim"}


def _create(name: str, checkpoint: str | Path | None, overrides: dict) -> SamViTBackend:
    return create_variant(name, VARIANTS[name], _build, checkpoint, overrides, fixed=_NOT_OVERRIDABLE)


@BACKENDS.register("sam_vit_b", info=_info(1024, 256))
def sam_vit_b(checkpoint: str | Path | None = None, **overrides) -> SamViTBackend:
    """SAM ViT-B; ``checkpoint``: path to ``sam_vit_b_01ec64.pth``."""
    return _create("sam_vit_b", checkpoint, overrides)


@BACKENDS.register("sam_vit_l", info=_info(1024, 256))
def sam_vit_l(checkpoint: str | Path | None = None, **overrides) -> SamViTBackend:
    """SAM ViT-L; ``checkpoint``: path to ``sam_vit_l_0b3195.pth``."""
    return _create("sam_vit_l", checkpoint, overrides)


@BACKENDS.register("sam_vit_h", info=_info(1024, 256))
def sam_vit_h(checkpoint: str | Path | None = None, **overrides) -> SamViTBackend:
    """SAM ViT-H; ``checkpoint``: path to ``sam_vit_h_4b8939.pth``."""
    return _create("sam_vit_h", checkpoint, overrides)


@BACKENDS.register("sam_tiny", info=_info(128, 64))
def sam_tiny(checkpoint: str | Path | None = None, **overrides) -> SamViTBackend:
    """Tiny random-init SAM (128 px, width 64) for tests and the quickstart."""
    return _create("sam_tiny", checkpoint, overrides)
