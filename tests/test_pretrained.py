"""`evf.load_pretrained`: released EVF-SAM directories (Hugging Face layout) load strictly and give
the official inference's masks.

The official model is composed here from the upstream packages it is made of (torchscale's BEiT3,
segment_anything's Sam, sam2's SAM2Base), with EVF-SAM's ``inference.py`` steps written out; the
parity with EVF-SAM's own code at reduced widths is in benchmarks/release_parity.py.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import evf
from evf.checkpoint import CheckpointError
from evf.encoders.beit3.tokenizer import SPM_NAME
from evf.module import EVFSAMModule
from evf.pretrained import ReleaseConfig
from tests.helpers import segment
from tests.release_helpers import (
    LAYOUTS,
    TINY_BEIT3,
    perturb,
    release_config,
    sam2_base_reference,
    torchscale_beit3,
    write_release,
)

PROMPT = "the red circle on the left"
BICUBIC = 3  # torchvision's InterpolationMode.BICUBIC, as EVF-SAM's dataset.py writes it


def _image(h=90, w=120, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _tokenizer_files(directory):
    from evf.assets import SHAPES_TOKENIZER

    (directory / SPM_NAME).write_bytes(SHAPES_TOKENIZER.read_bytes())


@pytest.fixture(scope="module")
def official_sam(tmp_path_factory):
    """An "EvfSamModel" of tiny sizes from upstream parts, and its release directory."""
    beit3 = torchscale_beit3(seed=0)
    sam = perturb(evf.create_backend("sam_tiny").sam, seed=3).eval()  # segment_anything's own Sam
    dim = TINY_BEIT3["embed_dim"]
    fcs = perturb(nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 64)), seed=4).eval()
    state = {
        **{f"mm_extractor.beit3.{k}": v for k, v in beit3.state_dict().items()},
        **{f"visual_model.{k}": v for k, v in sam.state_dict().items()},
        **{f"text_hidden_fcs.0.{k}": v for k, v in fcs.state_dict().items()},
    }
    directory = tmp_path_factory.mktemp("evf-sam-tiny")
    write_release(directory, state, release_config("EvfSamModel", "beit3_tiny", "sam_tiny", dim, 64))
    _tokenizer_files(directory)
    return beit3, sam, fcs, state, directory


def _official_sam_inference(beit3, sam, fcs, image, input_ids):
    """EVF-SAM's inference.py (``sam_preprocess``, ``beit3_preprocess``) + ``EvfSamModel.inference``."""
    from segment_anything.utils.transforms import ResizeLongestSide
    from torchvision import transforms

    size = sam.image_encoder.img_size
    x = ResizeLongestSide(size).apply_image(image)
    resize_shape = x.shape[:2]
    x = (torch.from_numpy(x).permute(2, 0, 1) - sam.pixel_mean) / sam.pixel_std
    x = F.pad(x, (0, size - x.shape[2], 0, size - x.shape[1]))
    beit = transforms.Compose([
        transforms.ToTensor(),
        transforms.Resize((TINY_BEIT3["img_size"],) * 2, interpolation=BICUBIC, antialias=None),
        transforms.Normalize((0.5,) * 3, (0.5,) * 3),
    ])(image)  # fmt: skip
    with torch.no_grad():
        embeddings = sam.image_encoder(x[None])
        out = beit3(
            visual_tokens=beit[None],
            textual_tokens=input_ids,
            text_padding_position=torch.zeros_like(input_ids),
        )
        feat = fcs(out["encoder_out"][:, :1])
        sparse, dense = sam.prompt_encoder(points=None, boxes=None, masks=None)
        sparse = torch.cat([sparse, feat], dim=1)  # EVF-SAM's prompt encoder appends text_embeds
        low_res, _ = sam.mask_decoder(
            image_embeddings=embeddings, image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False,
        )  # fmt: skip
        return sam.postprocess_masks(low_res, resize_shape, image.shape[:2])[0, 0]


@pytest.mark.reference
@pytest.mark.parametrize("size", [(90, 120), (150, 100)])
def test_sam_release_gives_the_official_inference_logits(official_sam, size):
    beit3, sam, fcs, _, directory = official_sam
    model = evf.load_pretrained(directory)
    image = _image(*size)
    ids = model.encoder.preprocessor.tokenize([PROMPT])["input_ids"]
    expected = _official_sam_inference(beit3, sam, fcs, image, ids)
    ours = segment(model, image, [PROMPT]).logits[0]
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.reference
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_weight_layout_loads_the_same_weights(official_sam, tmp_path, layout):
    *_, state, directory = official_sam
    config = json.loads((directory / "config.json").read_text())
    write_release(tmp_path, state, config, layout)
    _tokenizer_files(tmp_path)
    loaded = evf.load_pretrained(tmp_path).state_dict()
    reference = evf.load_pretrained(directory).state_dict()
    assert loaded.keys() == reference.keys()
    assert all(torch.equal(loaded[k], reference[k]) for k in loaded)


@pytest.mark.reference
@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("visual_model.mask_decoder.iou_token.weight"), "missing .*mask_decoder.iou_token"),
        (lambda s: s.pop("mm_extractor.beit3.encoder.layers.0.ffn.A.fc1.bias"), "missing .*mlp.vision.fc1"),
        (lambda s: s.update({"visual_model.extra_head.weight": torch.zeros(1)}), "visual_model.extra_head"),
        (lambda s: s.update({"text_hidden_fcs.1.0.weight": torch.zeros(1)}), "text_hidden_fcs.1.0.weight"),
    ],
    ids=["missing_backend_key", "missing_encoder_key", "unknown_backend_key", "unknown_projector_key"],
)  # fmt: skip
def test_a_wrong_or_missing_key_is_an_error_naming_it(official_sam, tmp_path, edit, message):
    *_, state, directory = official_sam
    state = dict(state)
    edit(state)
    write_release(tmp_path, state, json.loads((directory / "config.json").read_text()), "bin_sharded")
    _tokenizer_files(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        evf.load_pretrained(tmp_path)


@pytest.mark.reference
def test_a_shard_that_does_not_match_its_index_is_an_error(official_sam, tmp_path):
    *_, state, directory = official_sam
    write_release(tmp_path, state, json.loads((directory / "config.json").read_text()), "safetensors_sharded")
    index = tmp_path / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["visual_model.not_in_any_shard"] = "model-00001-of-00002.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="not_in_any_shard"):
        evf.load_pretrained(tmp_path)


@pytest.mark.reference
def test_sam2_release_loads_strictly_and_drops_the_video_memory(tmp_path):
    """Keys of sam2's own SAM2Base (memory modules included) under ``visual_model.``."""
    sam2_base = sam2_base_reference(seed=5)
    beit3 = torchscale_beit3(seed=6)
    source = perturb(evf.create_model("beit3_tiny", "sam2_tiny"), seed=7)
    state = {
        **{f"visual_model.{k}": v for k, v in sam2_base.state_dict().items()},
        **{f"mm_extractor.beit3.{k}": v for k, v in beit3.state_dict().items()},
        **{f"text_hidden_fcs.0.{k}": v for k, v in source.projector.state_dict().items()},
    }
    assert any(k.startswith("visual_model.memory_attention.") for k in state)
    write_release(tmp_path, state, release_config("EvfSam2Model", "beit3_tiny", "sam2_tiny", 128, 32), "bin")
    _tokenizer_files(tmp_path)
    model = evf.load_pretrained(tmp_path)
    sam2 = model.backend.sam2
    torch.testing.assert_close(sam2.mask_decoder.state_dict(), sam2_base.sam_mask_decoder.state_dict())
    torch.testing.assert_close(sam2.prompt_encoder.state_dict(), sam2_base.sam_prompt_encoder.state_dict())
    torch.testing.assert_close(sam2.image_encoder.backbone.state_dict(), sam2_base.image_encoder.state_dict())
    torch.testing.assert_close(sam2.image_encoder.no_mem_embed, sam2_base.no_mem_embed)


def test_efficient_sam_release_round_trips_the_source_weights(tmp_path):
    """EfficientSam's official keys are our module's (``tests/sam_backends/test_efficient_sam.py``)."""
    source = perturb(evf.create_model("beit3_tiny", "efficient_sam_tiny"), seed=8).eval()
    from evf.tools.export import release_state_dict

    state, _ = release_state_dict(source)
    official = {f"visual_model.{k}": v for k, v in source.backend.sam.state_dict().items()}
    assert {k: v for k, v in state.items() if k.startswith("visual_model.")}.keys() == official.keys()
    write_release(
        tmp_path, state, release_config("EvfEffiSamModel", "beit3_tiny", "efficient_sam_tiny", 128, 32)
    )
    _tokenizer_files(tmp_path)
    image = _image()
    torch.testing.assert_close(
        segment(evf.load_pretrained(tmp_path, preprocessing="training"), image, [PROMPT]).logits,
        segment(source, image, [PROMPT]).logits,
        rtol=0,
        atol=0,
    )


@pytest.mark.reference
def test_config_and_weights_of_different_families_is_an_error(official_sam, tmp_path):
    *_, state, directory = official_sam
    config = release_config("EvfSam2Model", "beit3_tiny", "sam2_tiny", 128, 32)
    write_release(tmp_path, state, config)
    _tokenizer_files(tmp_path)
    with pytest.raises(CheckpointError, match="EvfSam2Model.*look like sam "):
        evf.load_pretrained(tmp_path)


def test_a_model_without_a_released_layout_is_an_error():
    from dataclasses import replace

    from evf.pretrained import release_format

    with pytest.raises(CheckpointError, match="hold BEIT-3; this model has CLIPEncoder"):
        release_format(evf.create_model("clip_tiny", "sam_tiny"))
    model = evf.create_model("beit3_tiny", "sam_tiny")
    model.backend.info = replace(model.backend.info, release=None)
    with pytest.raises(CheckpointError, match="'sam' has no EVF-SAM release layout"):
        release_format(model)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"architectures": ["EvfSamModel"], "sam_scale": "large"}, "sam_scale='large' is not one of"),
        ({"architectures": ["LlamaForCausalLM"]}, "architectures="),
        ({"architectures": ["EvfSamModel"], "evf_backend": "sam2_tiny"}, "sam2 backend"),
        ({"architectures": ["EvfSamModel"], "sam_scale": "huge", "evf_backend": "sam_vit_b"}, "contradicts"),
        ({"architectures": ["EvfSamModel"], "sam_scale": "huge"}, "needs 'mm_extractor_scale'"),
    ],
)
def test_config_errors_name_the_field(tmp_path, fields, message):
    (tmp_path / "config.json").write_text(json.dumps(fields))
    with pytest.raises(CheckpointError, match=message):
        ReleaseConfig.read(tmp_path)


@pytest.mark.parametrize(
    "architecture, scale, backend",
    [("EvfSamModel", "huge", "sam_vit_h"), ("EvfSam2Model", "large", "sam2_hiera_l"),
     ("EvfSam2Model", "tiny", "sam2_hiera_t"), ("EvfEffiSamModel", "small", "efficient_sam_vits"),
     ("EvfEffiSamModel", "tiny", "efficient_sam_vitt")],
)  # fmt: skip
def test_official_config_fields_name_the_released_models(tmp_path, architecture, scale, backend):
    config = {
        "architectures": [architecture],
        "sam_scale": scale,
        "mm_extractor_scale": "large",
        "hidden_size": 1024,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    release = ReleaseConfig.read(tmp_path)
    assert (release.encoder, release.backend) == ("beit3_large", backend)


@pytest.mark.reference
@pytest.mark.parametrize("backend", ["sam_vit_h", "sam2_hiera_l"])
def test_full_size_release_keys_map_onto_our_model_on_meta(backend):
    """EVF-SAM's / EVF-SAM2's full key set (upstream Sam / SAM2Base of the released size, torchscale
    BEiT3-L, the projector) maps onto our full-size model exactly. Dropped: BEIT-3's last-layer text
    side, its text final norm and mask_token (17 tensors) and, for SAM-2, the video memory."""
    import sam2  # noqa: F401  (registers sam2's configs with hydra)
    from hydra import compose
    from hydra.utils import instantiate
    from segment_anything import sam_model_registry
    from torchscale.architecture.config import EncoderConfig
    from torchscale.model.BEiT3 import BEiT3

    from evf.pretrained import release_format
    from evf.sam_backends.sam2_build import linspace_on_cpu

    with torch.device("meta"), linspace_on_cpu():
        ours = evf.create_model("beit3_large", backend)
        beit3 = BEiT3(EncoderConfig(
            img_size=224, patch_size=16, vocab_size=64010, multiway=True, layernorm_embedding=False,
            normalize_output=True, no_output_layer=True, encoder_embed_dim=1024, encoder_attention_heads=16,
            encoder_ffn_embed_dim=4096, encoder_layers=24,
        ))  # fmt: skip
        if backend == "sam_vit_h":
            visual = sam_model_registry["vit_h"]()
        else:
            visual = instantiate(compose(config_name="configs/sam2/sam2_hiera_l.yaml").model)
    state = {
        **{f"visual_model.{k}": v for k, v in visual.state_dict().items()},
        **{f"mm_extractor.beit3.{k}": v for k, v in beit3.state_dict().items()},
        **{k: v for k, v in ours.state_dict().items() if k.startswith("projector.")},
    }
    state = {k.replace("projector.", "text_hidden_fcs.0."): v for k, v in state.items()}
    mapped = release_format(ours).remap(state)
    assert {k: v.shape for k, v in mapped.items()} == {k: v.shape for k, v in ours.state_dict().items()}
    n_beit3 = sum(k.startswith("mm_extractor.") for k in state)
    assert n_beit3 - sum(k.startswith("encoder.") for k in mapped) == 17


@pytest.mark.reference
def test_init_from_loads_the_release_into_a_fresh_module(official_sam):
    *_, directory = official_sam
    module = EVFSAMModule("beit3_tiny", "sam_tiny", init_from=directory)
    reference = evf.load_pretrained(directory).state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in module.model.state_dict().items())
    with pytest.raises(CheckpointError, match="'beit3_tiny' \\+ 'sam2_tiny'"):
        EVFSAMModule("beit3_tiny", "sam2_tiny", init_from=directory)


@pytest.mark.reference
def test_init_from_in_embedding_cache_mode_hashes_the_release_image_encoder(official_sam):
    *_, directory = official_sam
    cached = EVFSAMModule("beit3_tiny", "sam_tiny", init_from=directory, use_embedding_cache=True)
    full = evf.load_pretrained(directory)
    assert cached.model.backend.image_encoder_hash() == full.backend.image_encoder_hash()
    torch.testing.assert_close(cached.model.projector.state_dict(), full.projector.state_dict())


def test_inference_preprocessing_is_evf_sam_inference_py():
    """SAM-2 / EfficientSAM: ``F.interpolate`` of the uint8 tensor to the square, then SAM's mean/std
    (inference.py ``sam_preprocess``); BEIT-3: torchvision's bicubic resize without antialiasing."""
    from torchvision import transforms

    from evf.pretrained import use_inference_preprocessing

    image = _image(300, 451)  # downscaled on one side, upscaled... both exercised with the 128 px input
    for backend in ("sam2_tiny", "efficient_sam_tiny"):
        model = evf.create_model("beit3_tiny", backend)
        use_inference_preprocessing(model)
        size = model.backend.info.image.size
        x = F.interpolate(
            torch.from_numpy(image).permute(2, 0, 1)[None], (size, size), mode="bilinear", align_corners=False
        )[0]
        mean, std = (
            torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1),
            torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1),
        )
        torch.testing.assert_close(model.backend.info.image(image), (x - mean) / std, atol=1e-5, rtol=0)
    beit = transforms.Compose([
        transforms.ToTensor(),
        transforms.Resize((64, 64), interpolation=BICUBIC, antialias=None),
        transforms.Normalize((0.5,) * 3, (0.5,) * 3),
    ])(image)  # fmt: skip
    torch.testing.assert_close(model.encoder.preprocessor.transform_image(image), beit, atol=1e-5, rtol=0)
