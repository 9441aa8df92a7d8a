"""Parity of `evf.load_pretrained` and ``evf export`` with EVF-SAM's own code, per backend family.

    git clone https://github.com/hustvl/EVF-SAM /path/EVF-SAM     # checked at 9935dc5
    python benchmarks/release_parity.py --official /path/EVF-SAM

Imports the official ``inference.py`` and ``model/`` from that checkout (nothing of it is copied
here) and narrows their builders so a CPU runs them: BEIT-3 of width 64 / 2 layers (224 px), SAM
ViT of width 64 / 2 layers, Hiera of width 8, EfficientSAM ViT of width 32, at the real 1024 px
input, with perturbed random weights. For each family:

* load: official model -> release directory (its own ``state_dict``) -> `evf.load_pretrained` ->
  our logits vs ``model.inference`` after ``inference.py``'s ``sam_preprocess`` / ``beit3_preprocess``;
* export: our model -> `export_release` -> the official class, ``load_state_dict(strict=True)`` ->
  the same comparison;
* pixels: our inference preprocessing vs ``sam_preprocess`` on an image larger than 1024 px.

Prints a Markdown table (max |logit difference| at the original resolution, mask agreement).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import evf
from evf.assets import SHAPES_TOKENIZER
from evf.encoders.beit3.release import write_tokenizer
from evf.pretrained import use_inference_preprocessing
from evf.tools.export import export_release

DIM = 64
ENCODER_KWARGS = {"embed_dim": DIM, "depth": 2, "num_heads": 2}
HIERA = {"embed_dim": 8, "num_heads": 1, "stages": [1, 1, 2, 1], "global_att_blocks": [3],
         "window_pos_embed_bkg_spatial_size": [4, 4], "window_spec": [8, 4, 4, 2]}  # fmt: skip
# family: (official module, class, inference.py model_type, sam_scale, our backend, its overrides)
FAMILIES = {
    "sam": ("model.evf_sam", "EvfSamModel", "ori", "huge", "sam_vit_h",
            {"embed_dim": 64, "depth": 2, "num_heads": 2, "global_attn_indexes": [1]}),
    "sam2": ("model.evf_sam2", "EvfSam2Model", "sam2", "large", "sam2_hiera_l", HIERA),
    "efficient_sam": ("model.evf_effisam", "EvfEffiSamModel", "effi", "small", "efficient_sam_vits",
                      {"embed_dim": 32, "num_heads": 2}),
}  # fmt: skip
PROMPTS = ["the zebra on the left", "a small animal"]


def narrow_official_builders() -> None:
    """Replace the full-size builders the official modules call by narrow ones."""
    import importlib

    from hydra.core.global_hydra import GlobalHydra
    from torchscale.architecture.config import EncoderConfig

    GlobalHydra.instance().clear()  # the installed sam2 set up hydra; the official copy sets it up again

    def beit3_config(**_):
        return EncoderConfig(
            img_size=224, patch_size=16, vocab_size=64010, multiway=True, layernorm_embedding=False,
            normalize_output=True, no_output_layer=True, drop_path_rate=0, encoder_embed_dim=DIM,
            encoder_attention_heads=2, encoder_ffn_embed_dim=4 * DIM, encoder_layers=2,
        )  # fmt: skip

    sam, sam2, effi = (importlib.import_module(FAMILIES[f][0]) for f in FAMILIES)
    from model.EfficientSAM.efficient_sam.efficient_sam import build_efficient_sam
    from model.segment_anything.build_sam import _build_sam

    for module in (sam, sam2, effi):
        module._get_base_config = beit3_config
    sam.build_sam_vit_h = lambda checkpoint=None: _build_sam(64, 2, 2, [1], checkpoint)
    effi.build_efficient_sam_vits = lambda checkpoint=None: build_efficient_sam(32, 2, checkpoint).eval()
    build_sam2 = sam2.build_sam2
    overrides = [
        f"++model.image_encoder.trunk.{k}={json.dumps(v).replace(' ', '')}" for k, v in HIERA.items()
    ]
    overrides.append("++model.image_encoder.neck.backbone_channel_list=[64,32,16,8]")
    sam2.build_sam2 = lambda cfg, ckpt, device=None: build_sam2(
        cfg, ckpt, device=device, hydra_overrides_extra=overrides
    )


def perturb(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def official_model(family: str):
    import importlib

    from model.configuration_evf import EvfConfig

    module, cls, _, scale, *_ = FAMILIES[family]
    config = EvfConfig(sam_scale=scale, mm_extractor_scale="base", hidden_size=DIM, out_dim=256)
    return getattr(importlib.import_module(module), cls)(config).eval()


def official_logits(inference, model, family: str, image: np.ndarray, prompt: str, tokenizer) -> torch.Tensor:
    model_type = FAMILIES[family][2]
    beit = inference.beit3_preprocess(image, 224)
    sam, resize_shape = inference.sam_preprocess(image, model_type=model_type)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.inference(
            sam[None], beit[None], ids, resize_list=[resize_shape], original_size_list=[image.shape[:2]]
        )
    return out[0].float()


def official_image_embedding(inference, model, family: str, image: np.ndarray) -> torch.Tensor:
    """The lowest-resolution image features the mask decoder reads (SAM-2: plus ``no_mem_embed``)."""
    pixels, _ = inference.sam_preprocess(image, model_type=FAMILIES[family][2])
    visual = model.visual_model
    with torch.no_grad():
        if family != "sam2":
            return visual.image_encoder(pixels[None])
        _, feats, _, _ = visual._prepare_backbone_features(visual.forward_image(pixels[None]))
        side = pixels.shape[-1] // 16
        return (feats[-1] + visual.no_mem_embed).permute(1, 2, 0).view(1, -1, side, side)


def write_official_release(model, family: str, directory: Path) -> None:
    _, cls, _, scale, backend, kwargs = FAMILIES[family]
    state = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config = {"architectures": [cls], "model_type": "evf", "sam_scale": scale, "mm_extractor_scale": "base",
              "hidden_size": DIM, "out_dim": 256, "evf_encoder": "beit3_base",
              "evf_encoder_kwargs": ENCODER_KWARGS,
              "evf_backend": backend, "evf_backend_kwargs": kwargs}  # fmt: skip
    (directory / "config.json").write_text(json.dumps(config))
    write_tokenizer(SHAPES_TOKENIZER, directory)


def logits_of(model: evf.EVFSAM, image: np.ndarray, prompts: list[str]) -> torch.Tensor:
    """``[n,H,W]`` float32 logits of ``prompts`` on ``image``: a fresh `evf.Predictor` (threshold 0,
    no autocast), ``set_image`` then ``predict``."""
    predictor = evf.Predictor(model)
    predictor.set_image(image)
    return predictor.predict(prompts).logits


def compare(ref: torch.Tensor, ours: torch.Tensor) -> str:
    agree = ((ref > 0) == (ours > 0)).float().mean().item()
    return f"{(ref - ours).abs().max().item():.1e} | {agree:.6f}"


def run(official: Path, image_path: Path) -> list[str]:
    sys.path.insert(0, str(official))
    import inference  # the official inference.py
    from transformers import AutoTokenizer

    narrow_official_builders()
    image = np.asarray(Image.open(image_path).convert("RGB"))
    large = np.random.default_rng(0).integers(0, 256, (1500, 2001, 3), dtype=np.uint8)
    rows = ["| family | check | input | max abs logit diff | mask agreement |", "|---|---|---|---|---|"]
    for family, (*_, backend, kwargs) in FAMILIES.items():
        torch.manual_seed(0)
        reference = official_model(family)
        perturb(reference, 1)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            write_official_release(reference, family, tmp)
            tokenizer = AutoTokenizer.from_pretrained(str(tmp), padding_side="right", use_fast=False)
            ours = evf.load_pretrained(tmp)
            for prompt in PROMPTS:
                expected = official_logits(inference, reference, family, image, prompt, tokenizer)
                got = logits_of(ours, image, [prompt])[0]
                rows.append(
                    f"| {family} | load_pretrained | {image_path.name}, {prompt!r} "
                    f"| {compare(expected, got)} |"
                )
            expected = official_image_embedding(inference, reference, family, image)
            with torch.no_grad():
                got = next(iter(ours.backend.encode_image(ours.backend.info.image(image)[None]).values()))
            diff = (expected - got).abs().max()
            rows.append(f"| {family} | image embedding | {image_path.name} | {diff:.1e} "
                        f"(mean abs {expected.abs().mean():.2f}) | |")  # fmt: skip
            pixels, _ = inference.sam_preprocess(large, model_type=FAMILIES[family][2])
            diff = (pixels - ours.backend.info.image(large)).abs().max().item()
            rows.append(f"| {family} | preprocessing | 1500x2001 | {diff:.1e} (pixels) | |")
            encoder_kwargs = {**ENCODER_KWARGS, "tokenizer": SHAPES_TOKENIZER}
            mine = evf.create_model("beit3_base", backend, encoder_kwargs=encoder_kwargs,
                                    backend_kwargs=kwargs).eval()  # fmt: skip
            perturb(mine, 2)
            export_release(mine, tmp / "export", "beit3_base", backend, ENCODER_KWARGS, kwargs)
            back = official_model(family)
            written = load_file(str(tmp / "export" / "model.safetensors"))
            missing = set(back.state_dict()) - set(written)  # SAM-2's video memory, not part of our model
            back.load_state_dict({**{k: back.state_dict()[k] for k in missing}, **written}, strict=True)
            use_inference_preprocessing(mine)
            expected = official_logits(inference, back, family, image, PROMPTS[0], tokenizer)
            got = logits_of(mine, image, PROMPTS[:1])[0]
            rows.append(
                f"| {family} | export ({len(missing)} memory keys absent) | {image_path.name} "
                f"| {compare(expected, got)} |"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="checkout of hustvl/EVF-SAM")
    parser.add_argument("--image", type=Path, help="test image (default: the checkout's assets/zebra.jpg)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    print("\n".join(run(args.official.resolve(), args.image or args.official / "assets/zebra.jpg")))


if __name__ == "__main__":
    main()
