"""Helpers for tests of the released EVF-SAM layout: reference modules from upstream packages
(torchscale's BEiT3, segment_anything's Sam, sam2's SAM2Base), and release directories in every
weight layout (single / sharded, ``.bin`` / ``.safetensors``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from evf.encoders.beit3 import VARIANTS as BEIT3_VARIANTS
from evf.sam_backends.sam2_build import VARIANTS as SAM2_VARIANTS

TINY_BEIT3 = BEIT3_VARIANTS["beit3_tiny"]
LAYOUTS = ("safetensors", "bin", "safetensors_sharded", "bin_sharded")


def perturb(module: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Add noise to every parameter, so that zero / one initialisations hide nothing."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return module


def torchscale_beit3(seed: int = 0):
    """torchscale's BEiT3 with ``beit3_tiny``'s sizes and unilm's config (what EVF-SAM builds)."""
    from torchscale.architecture.config import EncoderConfig
    from torchscale.model.BEiT3 import BEiT3

    t = TINY_BEIT3
    config = EncoderConfig(
        img_size=t["img_size"], patch_size=t["patch_size"], vocab_size=t["vocab_size"], multiway=True,
        layernorm_embedding=False, normalize_output=True, no_output_layer=True,
        encoder_embed_dim=t["embed_dim"], encoder_attention_heads=t["num_heads"],
        encoder_ffn_embed_dim=4 * t["embed_dim"], encoder_layers=t["depth"],
        max_source_positions=t["max_source_positions"],
    )  # fmt: skip
    torch.manual_seed(seed)
    return perturb(BEiT3(config), seed + 1).eval()


def sam2_base_reference(seed: int = 0):
    """A full SAM2Base (memory modules included) of ``sam2_tiny``'s sizes, from sam2's own config:
    its state dict has the key names of a released EVF-SAM2's ``visual_model``."""
    import sam2  # noqa: F401  (registers sam2's packaged configs with hydra)
    from hydra import compose
    from hydra.utils import instantiate

    t, trunk = SAM2_VARIANTS["sam2_tiny"], "model.image_encoder.trunk"
    overrides = [
        f"model.image_size={t['image_size']}",
        f"{trunk}.embed_dim={t['embed_dim']}",
        f"{trunk}.num_heads={t['num_heads']}",
        f"{trunk}.stages={list(t['stages'])}",
        f"{trunk}.global_att_blocks={list(t['global_att_blocks'])}",
        f"{trunk}.window_pos_embed_bkg_spatial_size={list(t['window_pos_embed_bkg_spatial_size'])}",
        f"++{trunk}.window_spec={list(t['window_spec'])}",
        f"model.image_encoder.neck.d_model={t['prompt_dim']}",
        f"model.image_encoder.neck.backbone_channel_list={[t['embed_dim'] * 2**i for i in (3, 2, 1, 0)]}",
        f"model.image_encoder.neck.position_encoding.num_pos_feats={t['prompt_dim']}",
        "model.memory_attention.num_layers=1",
        "model.memory_attention.layer.dim_feedforward=32",
    ]
    torch.manual_seed(seed)
    model = instantiate(compose(config_name="configs/sam2/sam2_hiera_t.yaml", overrides=overrides).model)
    return perturb(model, seed + 1).eval()


def release_config(
    architecture: str, encoder: str, backend: str, hidden_size: int, out_dim: int, **extra
) -> dict:
    """A config.json of the released layout naming tiny registry models explicitly."""
    return {
        "architectures": [architecture], "model_type": "evf", "sam_scale": None, "mm_extractor_scale": None,
        "hidden_size": hidden_size, "out_dim": out_dim, "evf_encoder": encoder, "evf_backend": backend,
        **extra,
    }  # fmt: skip


def write_release(
    directory: Path, state: dict[str, torch.Tensor], config: dict, layout: str = "safetensors"
) -> Path:
    """Write config.json and the weights in ``layout`` (one of `LAYOUTS`; shards split the keys in
    two, with the Hugging Face index file)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    state = {k: v.detach().contiguous().clone() for k, v in state.items()}
    suffix = "safetensors" if layout.startswith("safetensors") else "bin"
    base = "model" if suffix == "safetensors" else "pytorch_model"
    if not layout.endswith("sharded"):
        _save(state, directory / f"{base}.{suffix}")
        return directory
    keys = sorted(state)
    shards = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    weight_map = {}
    for n, shard in enumerate(shards, start=1):
        name = f"{base}-{n:05d}-of-{len(shards):05d}.{suffix}"
        _save({k: state[k] for k in shard}, directory / name)
        weight_map.update(dict.fromkeys(shard, name))
    index = {
        "metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
        "weight_map": weight_map,
    }
    (directory / f"{base}.{suffix}.index.json").write_text(json.dumps(index))
    return directory


def _save(state: dict[str, torch.Tensor], path: Path) -> None:
    if path.suffix == ".safetensors":
        save_file(state, str(path), metadata={"format": "pt"})
    else:
        torch.save(state, path)
