"""SAM 2 and SAM 2.1 (package ``sam2``) as EVF backends: the image path only.

We build sam2's own modules unchanged (Hiera trunk + FPN neck, ``PromptEncoder``, ``MaskDecoder``)
and leave the video-memory modules out: EVF works on single images, where SAM 2 adds the learned
``no_mem_embed`` to the lowest-resolution features instead of running memory attention
(``SAM2ImagePredictor.set_image``). Official checkpoints still load strictly: `SAM2_CHECKPOINT` maps
every image-path key and drops the memory keys by name, with a reason; `RELEASE_LAYOUT` is how
EVF-SAM2's released checkpoints hold them. Video builds sam2's full model, memory included, from the
variant's own sam2 config (`video_config`; `evf.video.tracker`).

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

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from sam2.modeling.backbones.hieradet import Hiera
from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
from sam2.modeling.position_encoding import PositionEmbeddingSine
from sam2.modeling.sam.mask_decoder import MaskDecoder
from sam2.modeling.sam.prompt_encoder import PromptEncoder
from sam2.modeling.sam.transformer import TwoWayTransformer
from torch import nn
from torch.nn.init import trunc_normal_
from torch.overrides import TorchFunctionMode

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
        sparse, dense = self._embed_prompts(len(image_index), text_tokens, points, boxes)
        dec = self.sam2.mask_decoder
        # Per image, before the gather (as SAM2Base.forward_image), but here so that they train with
        # the decoder: encode_image runs without autograd while the image encoder is frozen.
        high_res = [dec.conv_s0(features["high_res_s4"]), dec.conv_s1(features["high_res_s8"])]
        masks, iou, _, _ = dec(
            image_embeddings=features["image_embed"][image_index],
            image_pe=self.sam2.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
            repeat_image=False,
            high_res_features=[level[image_index] for level in high_res],
        )
        best = iou.argmax(dim=1, keepdim=True)
        logits = masks.gather(1, best[:, :, None, None].expand(-1, -1, *masks.shape[-2:]))
        return DecoderOutput(logits=logits, iou=iou.gather(1, best))

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


# Official sam2_hiera_*.pt / sam2.1_hiera_*.pt hold a full SAM2Base state dict under "model".
_VIDEO = "video memory, not used on single images:"
SAM2_CHECKPOINT = CheckpointFormat(
    name="sam2",
    rules=(
        Rule(r"image_encoder\.(.+)", r"image_encoder.backbone.\1"),
        Rule(r"no_mem_embed", "image_encoder.no_mem_embed"),
        Rule(r"sam_prompt_encoder\.(.+)", r"prompt_encoder.\1"),
        Rule(r"sam_mask_decoder\.(.+)", r"mask_decoder.\1"),
        Rule(r"memory_attention\..+", None, f"{_VIDEO} attention of a frame's features over past memories"),
        Rule(r"memory_encoder\..+", None, f"{_VIDEO} encodes a predicted mask into a memory"),
        Rule(r"maskmem_tpos_enc", None, f"{_VIDEO} temporal position of each memory frame"),
        Rule(r"no_mem_pos_enc", None, f"{_VIDEO} position of the no-memory token in memory attention"),
        Rule(r"mask_downsample\..+", None, f"{_VIDEO} turns an input mask into an object pointer"),
        Rule(r"obj_ptr_proj\..+", None, f"{_VIDEO} projects decoder tokens into object pointers"),
        Rule(r"obj_ptr_tpos_proj\..+", None, f"{_VIDEO} (SAM 2.1) temporal encoding of object pointers"),
        Rule(r"no_obj_ptr", None, f"{_VIDEO} pointer used when the object is absent"),
        Rule(r"no_obj_embed_spatial", None, f"{_VIDEO} (SAM 2.1) memory embedding of an absent object"),
    ),
)

# EVF-SAM2's releases (evf-sam2, evf-sam2-multitask) hold a full SAM2Base under visual_model.; our
# export writes the image path back under sam2's names (the video memory is not part of our model).
RELEASE_LAYOUT = ReleaseLayout(
    architecture="EvfSam2Model",
    scales={"large": "sam2_hiera_l", "tiny": "sam2_hiera_t"},
    format=SAM2_CHECKPOINT,
    export_rules=(
        Rule(r"image_encoder\.backbone\.(.+)", r"image_encoder.\1"),
        Rule(r"image_encoder\.no_mem_embed", "no_mem_embed"),
        Rule(r"prompt_encoder\.(.+)", r"sam_prompt_encoder.\1"),
        Rule(r"mask_decoder\.(.+)", r"sam_mask_decoder.\1"),
    ),
    marker="sam_prompt_encoder.no_mask_embed.weight",
    inference_image=UINT8_SQUARE_RESIZE,
)


class _LinspaceOnCpu(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.linspace:
            kwargs = {**kwargs, "device": "cpu"}
        return func(*args, **kwargs)


@contextmanager
def linspace_on_cpu() -> Iterator[None]:
    """Run ``torch.linspace`` on the CPU inside the block.

    Hiera builds its drop-path schedule with ``torch.linspace(...)`` and ``.item()``, which a tensor
    on the ``meta`` device cannot answer; the schedule is only Python floats, so computing it on the
    CPU lets every SAM 2 variant build under ``with torch.device("meta")``.
    """
    with _LinspaceOnCpu():
        yield


def _image_encoder(
    *,
    embed_dim: int,
    num_heads: int,
    stages: tuple[int, ...],
    global_att_blocks: tuple[int, ...],
    window_pos_embed_bkg_spatial_size: tuple[int, int],
    window_spec: tuple[int, ...],
    prompt_dim: int,
    drop_path_rate: float,
) -> Sam2ImageEncoder:
    """Hiera trunk + FPN neck (sam2's ``ImageEncoder``, ``scalp=1``) + ``no_mem_embed``."""
    with linspace_on_cpu():
        trunk = Hiera(
            embed_dim=embed_dim,
            num_heads=num_heads,
            drop_path_rate=drop_path_rate,
            stages=stages,
            global_att_blocks=global_att_blocks,
            window_pos_embed_bkg_spatial_size=window_pos_embed_bkg_spatial_size,
            window_spec=window_spec,
        )
    neck = FpnNeck(
        position_encoding=PositionEmbeddingSine(prompt_dim, normalize=True, warmup_cache=False),
        d_model=prompt_dim,
        backbone_channel_list=trunk.channel_list,
        fpn_top_down_levels=[2, 3],  # levels 0 and 1 (strides 4, 8) use only their lateral features
        fpn_interp_model="nearest",
    )
    return Sam2ImageEncoder(ImageEncoder(trunk=trunk, neck=neck, scalp=1), prompt_dim)


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
        encoder = _image_encoder(prompt_dim=prompt_dim, drop_path_rate=drop_path_rate, **hiera)
    grid = image_size // 16  # stride of the image embedding (SAM2Base.backbone_stride)
    # Prompt encoder and mask decoder exactly as SAM2Base._build_sam_heads with the official configs'
    # flags (high-res features, sigmoid IoU head, object-score token and MLP head).
    sam2 = nn.ModuleDict(
        {
            "image_encoder": encoder,
            "prompt_encoder": PromptEncoder(
                embed_dim=prompt_dim,
                image_embedding_size=(grid, grid),
                input_image_size=(image_size, image_size),
                mask_in_chans=16,
            ),
            "mask_decoder": MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=2048, num_heads=8),
                transformer_dim=prompt_dim,
                iou_head_depth=3,
                iou_head_hidden_dim=256,
                use_high_res_features=True,
                iou_prediction_use_sigmoid=True,
                pred_obj_scores=True,
                pred_obj_scores_mlp=True,
                use_multimask_token_for_obj_ptr=True,
            ),
        }
    )
    backend = Sam2Backend(sam2, _info(image_size, prompt_dim))
    if checkpoint is not None:
        load_backend_checkpoint(backend.sam2, checkpoint, SAM2_CHECKPOINT)
    return backend


def _info(image_size: int, prompt_dim: int) -> BackendInfo:
    image = ImageSpec(
        size=image_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        pixel_scale=1.0,
        resize="square",
        interpolation="bilinear",  # EVF-SAM's `Resize`: torchvision resize of a PIL image to S x S
        resampler="pil",
    )
    return BackendInfo(family="sam2", image=image, prompt_dim=prompt_dim, release=RELEASE_LAYOUT)


# Hiera sizes of sam2's configs/sam2/sam2_hiera_{t,s,b+,l}.yaml, identical in configs/sam2.1/
# (SAM 2.1 changed only the memory modules); tests/sam_backends/test_sam2.py checks them against
# the yaml files. Unlisted Hiera arguments keep sam2's defaults, as the yaml files do.
_HIERA: dict[str, dict] = {
    "t": dict(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
              window_pos_embed_bkg_spatial_size=(7, 7), window_spec=(8, 4, 14, 7)),
    "s": dict(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13),
              window_pos_embed_bkg_spatial_size=(7, 7), window_spec=(8, 4, 14, 7)),
    "b+": dict(embed_dim=112, num_heads=2, stages=(2, 3, 16, 3), global_att_blocks=(12, 16, 20),
               window_pos_embed_bkg_spatial_size=(14, 14), window_spec=(8, 4, 14, 7)),
    "l": dict(embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43),
              window_pos_embed_bkg_spatial_size=(7, 7), window_spec=(8, 4, 16, 8)),
}  # fmt: skip
VARIANTS: dict[str, dict] = {
    f"{version}_hiera_{size}": dict(image_size=1024, prompt_dim=256, **hiera)
    for version in ("sam2", "sam2.1")
    for size, hiera in _HIERA.items()
}
_HIERA_FILES = set(VARIANTS)  # the released sizes: each has its own sam2 config file
# Tiny random-init SAM 2 for tests: 128 px input, Hiera of width 8, FPN width 32, 8x8 embedding grid.
VARIANTS["sam2_tiny"] = dict(
    image_size=128, prompt_dim=32, embed_dim=8, num_heads=1, stages=(1, 1, 2, 1), global_att_blocks=(3,),
    window_pos_embed_bkg_spatial_size=(4, 4), window_spec=(8, 4, 4, 2),
)  # fmt: skip

# Fixed per registered name, because the data side reads them from the registry metadata.
_NOT_OVERRIDABLE = {"image_size", "prompt_dim"}


def _create(name: str, checkpoint: str | Path | None, overrides: dict) -> Sam2Backend:
    backend = create_variant(
        name, VARIANTS[name], _build, checkpoint, overrides, fixed=_NOT_OVERRIDABLE, extra={"drop_path_rate"}
    )
    backend.variant = name
    return backend


def video_config(variant: str | None) -> tuple[str, list[str]]:
    """sam2's config file and hydra overrides that build the full video model (``SAM2Base`` with its
    memory modules) of a registered variant: its own config file; for ``sam2_tiny``, SAM 2 Hiera-T's
    with every width shrunk to the tiny image path (one memory-attention layer, memory width 16).

    Raises:
        ValueError: an unknown variant (e.g. a backend built outside the registry).
    """
    if variant in _HIERA_FILES:
        version, size = variant.split("_hiera_")
        return f"configs/{version}/{version}_hiera_{size}.yaml", []
    if variant != "sam2_tiny":
        raise ValueError(f"no sam2 video config for SAM-2 backend {variant!r}; known: {sorted(VARIANTS)}")
    tiny = VARIANTS["sam2_tiny"]
    dim, width, grid = tiny["prompt_dim"], tiny["embed_dim"], tiny["image_size"] // 16
    trunk, memory_dim = "++model.image_encoder.trunk", 16
    attention = "++model.memory_attention.layer"
    overrides = [
        f"++model.image_size={tiny['image_size']}",
        *(
            f"{trunk}.{key}={list(tiny[key]) if isinstance(tiny[key], tuple) else tiny[key]}"
            for key in _HIERA["t"]
        ),
        f"++model.image_encoder.neck.d_model={dim}",
        f"++model.image_encoder.neck.backbone_channel_list={[width * 8, width * 4, width * 2, width]}",
        f"++model.image_encoder.neck.position_encoding.num_pos_feats={dim}",
        f"++model.memory_attention.d_model={dim}",
        "++model.memory_attention.num_layers=1",
        f"{attention}.d_model={dim}",
        f"{attention}.dim_feedforward={2 * dim}",
        *(f"{attention}.{a}.embedding_dim={dim}" for a in ("self_attention", "cross_attention")),
        *(f"{attention}.{a}.feat_sizes={[grid, grid]}" for a in ("self_attention", "cross_attention")),
        f"{attention}.cross_attention.kv_in_dim={memory_dim}",
        f"++model.memory_encoder.in_dim={dim}",
        f"++model.memory_encoder.out_dim={memory_dim}",
        f"++model.memory_encoder.position_encoding.num_pos_feats={memory_dim}",
        f"++model.memory_encoder.mask_downsampler.embed_dim={dim}",
        f"++model.memory_encoder.fuser.layer.dim={dim}",
    ]
    return "configs/sam2/sam2_hiera_t.yaml", overrides


_FULL = _info(1024, 256)


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


@BACKENDS.register("sam2_tiny", info=_info(128, 32))
def sam2_tiny(checkpoint: str | Path | None = None, **overrides) -> Sam2Backend:
    """Tiny random-init SAM 2 (128 px, width 32) for tests."""
    return _create("sam2_tiny", checkpoint, overrides)
