"""Build SAM 2's image-path modules and video configs from sam2's config numbers.

The Hiera trunk + FPN neck (`image_backbone`), the prompt encoder and mask decoder (`sam_heads`), the
Hiera sizes of every registered variant (`VARIANTS`), each variant's `BackendInfo` (`backend_info`),
and the sam2 config file + hydra overrides of its full video model (`video_config`). Only sam2's own
classes are built here; `evf.sam_backends.sam2` assembles them into a `Sam2Backend`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from sam2.modeling.backbones.hieradet import Hiera
from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
from sam2.modeling.position_encoding import PositionEmbeddingSine
from sam2.modeling.sam.mask_decoder import MaskDecoder
from sam2.modeling.sam.prompt_encoder import PromptEncoder
from sam2.modeling.sam.transformer import TwoWayTransformer
from torch.overrides import TorchFunctionMode

from evf.preprocessing import IMAGENET_MEAN, IMAGENET_STD, ImageSpec
from evf.sam_backends.base import BackendInfo
from evf.sam_backends.sam2_checkpoints import RELEASE_LAYOUT


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


def image_backbone(
    *,
    embed_dim: int,
    num_heads: int,
    stages: tuple[int, ...],
    global_att_blocks: tuple[int, ...],
    window_pos_embed_bkg_spatial_size: tuple[int, int],
    window_spec: tuple[int, ...],
    prompt_dim: int,
    drop_path_rate: float,
) -> ImageEncoder:
    """Hiera trunk + FPN neck: sam2's ``ImageEncoder`` with ``scalp=1``."""
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
    return ImageEncoder(trunk=trunk, neck=neck, scalp=1)


def sam_heads(image_size: int, prompt_dim: int) -> tuple[PromptEncoder, MaskDecoder]:
    """Prompt encoder and mask decoder exactly as ``SAM2Base._build_sam_heads`` with the official
    configs' flags (high-res features, sigmoid IoU head, object-score token and MLP head)."""
    grid = image_size // 16  # stride of the image embedding (SAM2Base.backbone_stride)
    prompt_encoder = PromptEncoder(
        embed_dim=prompt_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(image_size, image_size),
        mask_in_chans=16,
    )
    mask_decoder = MaskDecoder(
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
    )
    return prompt_encoder, mask_decoder


def backend_info(image_size: int, prompt_dim: int) -> BackendInfo:
    """Registry metadata of a SAM 2 variant: EVF-SAM2's preprocessing and the release layout."""
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
