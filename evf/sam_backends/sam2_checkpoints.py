"""How SAM 2 checkpoints name the tensors of our SAM 2 image path.

`SAM2_CHECKPOINT` maps official ``sam2_hiera_*.pt`` / ``sam2.1_hiera_*.pt`` keys onto
`evf.sam_backends.sam2.Sam2Backend`'s ``sam2`` module and drops the video-memory keys by name, with a
reason; `RELEASE_LAYOUT` is how EVF-SAM2's released checkpoints hold them.
"""

from __future__ import annotations

from evf.checkpoint import CheckpointFormat, Rule
from evf.sam_backends.base import UINT8_SQUARE_RESIZE, ReleaseLayout

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
