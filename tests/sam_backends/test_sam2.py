import logging

import numpy as np
import pytest
import sam2  # noqa: F401  (initialises hydra's search path over sam2's packaged configs)
import torch
from hydra import compose
from hydra.utils import instantiate
from PIL import Image
from sam2.sam2_image_predictor import SAM2ImagePredictor

import evf
from evf.checkpoint import CheckpointError
from evf.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from evf.sam_backends import PointPrompts
from evf.sam_backends.sam2_build import VARIANTS, linspace_on_cpu
from evf.sam_backends.sam2_checkpoints import SAM2_CHECKPOINT

FULL = [name for name in VARIANTS if name != "sam2_tiny"]
MEMORY_PREFIXES = {
    "memory_attention", "memory_encoder", "maskmem_tpos_enc", "no_mem_pos_enc", "mask_downsample",
    "obj_ptr_proj", "obj_ptr_tpos_proj", "no_obj_ptr", "no_obj_embed_spatial",
}  # fmt: skip


def _config(name: str) -> str:
    version, size = name.split("_hiera_")
    return f"configs/{version}/{version}_hiera_{size}.yaml"


def _tiny_reference():
    """A full SAM2Base (memory modules included) of sam2_tiny's sizes, from sam2's own config."""
    t = VARIANTS["sam2_tiny"]
    trunk = "model.image_encoder.trunk"
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
    return instantiate(
        compose(config_name="configs/sam2.1/sam2.1_hiera_t.yaml", overrides=overrides).model
    ).eval()


@pytest.fixture(scope="module")
def reference_and_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    reference = _tiny_reference()
    path = tmp_path_factory.mktemp("sam2") / "sam2.1_tiny.pt"
    torch.save({"model": reference.state_dict()}, path)  # the official .pt layout
    return reference, path


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("size, box", [((100, 150), None), ((160, 90), None), ((100, 150), (10, 20, 90, 70))])
def test_points_match_sam2_image_predictor(reference_and_checkpoint, size, box):
    """Multimask decoding, compared with the predictor's mask of highest predicted IoU."""
    reference, path = reference_and_checkpoint
    backend = evf.create_backend("sam2_tiny", checkpoint=path).eval()
    image = _image(*size)
    coords = np.array([[30.0, 40.0], [70.0, 20.0]])
    labels = np.array([1, 0])

    predictor = SAM2ImagePredictor(reference)
    grid = backend.info.image.size // 4  # the predictor hard-codes the feature sizes of a 1024 px model
    predictor._bb_feat_sizes = [(grid, grid), (grid // 2, grid // 2), (grid // 4, grid // 4)]
    predictor.set_image(image)
    ref_masks, ref_iou, ref_low = predictor.predict(
        coords, labels, box=None if box is None else np.array(box), multimask_output=True, return_logits=True
    )
    best = int(np.argmax(ref_iou))

    with torch.no_grad():
        # The predictor's own resize (torch, antialiased) so that both models see the same pixels;
        # our ImageSpec follows EVF-SAM2's PIL resize instead (test below).
        features = backend.encode_image(predictor._transforms(image)[None])
        points = PointPrompts(
            coords=backend.info.image.transform_coords(torch.tensor(coords, dtype=torch.float32)[None], size),
            labels=torch.tensor(labels)[None],
        )
        boxes = None
        if box is not None:
            corners = torch.tensor(box, dtype=torch.float32).view(1, 2, 2)
            boxes = backend.info.image.transform_coords(corners, size).view(1, 4)
        out = backend.decode(features, torch.zeros(1, dtype=torch.long), None, points=points, boxes=boxes)
        logits = backend.postprocess(out.logits, backend.info.image.resized_size(*size), size)

    # Measured: bit-identical (max difference 0.0) on CPU.
    torch.testing.assert_close(out.logits[0, 0].clamp(-32, 32).numpy(), ref_low[best], atol=1e-6, rtol=0)
    torch.testing.assert_close(logits[0].numpy(), ref_masks[best], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.iou[0, 0].item(), float(ref_iou[best]), atol=1e-6, rtol=0)


def test_high_res_projections_train_with_the_mask_decoder():
    """conv_s0 / conv_s1 are mask-decoder weights: they get gradients while the image encoder is frozen."""
    model = evf.create_model("beit3_tiny", "sam2_tiny").train()
    size = model.backend.info.image.size
    features = model.encode_images(torch.randn(1, 3, size, size))
    assert not any(f.requires_grad for f in features.values())
    text = torch.randn(2, 1, model.backend.prompt_dim)
    model.backend.decode(features, torch.zeros(2, dtype=torch.long), text).logits.sum().backward()
    decoder = model.backend.mask_decoder
    for conv in (decoder.conv_s0, decoder.conv_s1):
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_preprocessing_is_evf_sam2s_square_pil_resize():
    spec = evf.create_backend("sam2_tiny").info.image
    image = _image(100, 150)
    resized = np.asarray(Image.fromarray(image).resize((spec.size, spec.size), Image.Resampling.BILINEAR))
    expected = (
        torch.from_numpy(resized / 255.0).permute(2, 0, 1) - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    ) / (torch.tensor(IMAGENET_STD).view(3, 1, 1))
    torch.testing.assert_close(spec(image), expected.float(), atol=1e-5, rtol=0)


def test_official_checkpoint_loads_strictly_and_drops_only_memory_keys(reference_and_checkpoint, caplog):
    reference, path = reference_and_checkpoint
    with caplog.at_level(logging.INFO, logger="evf.checkpoint"):
        backend = evf.create_backend("sam2_tiny", checkpoint=path)
    state = reference.state_dict()
    remapped = SAM2_CHECKPOINT.remap(state)
    ours = backend.sam2.state_dict()
    assert remapped.keys() == ours.keys()
    for key, value in remapped.items():
        assert torch.equal(ours[key], value), key
    dropped = {k.split(".")[0] for k in state} - {"image_encoder", "no_mem_embed", "sam_prompt_encoder",
                                                   "sam_mask_decoder"}  # fmt: skip
    assert dropped == MEMORY_PREFIXES
    n_dropped = sum(1 for k in state if k.split(".")[0] in MEMORY_PREFIXES)
    assert f"dropped {n_dropped} tensor(s) on purpose" in caplog.text


def test_unknown_key_is_an_error_naming_it(reference_and_checkpoint, tmp_path):
    state = dict(reference_and_checkpoint[0].state_dict())
    state["memory_bank.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pt"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match=r"memory_bank\.weight") as err:
        evf.create_backend("sam2_tiny", checkpoint=path)
    assert str(path) in str(err.value)


def test_missing_or_extra_image_path_key_is_an_error(reference_and_checkpoint, tmp_path):
    state = dict(reference_and_checkpoint[0].state_dict())
    del state["sam_prompt_encoder.no_mask_embed.weight"]
    state["sam_mask_decoder.extra_head.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pt"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as err:
        evf.create_backend("sam2_tiny", checkpoint=path)
    assert "prompt_encoder.no_mask_embed.weight" in str(err.value)
    assert "mask_decoder.extra_head.weight" in str(err.value)


@pytest.mark.parametrize("name", FULL)
def test_variant_matches_sam2_yaml_config_on_meta_device(name):
    cfg = compose(config_name=_config(name))
    with torch.device("meta"), linspace_on_cpu():
        reference = instantiate(cfg.model)
        ours = evf.create_backend(name)
    # Every official key is mapped or dropped by rule, and the mapped ones fit our model exactly.
    remapped = SAM2_CHECKPOINT.remap(reference.state_dict())
    assert {k: v.shape for k, v in remapped.items()} == {
        k: v.shape for k, v in ours.sam2.state_dict().items()
    }
    # What the weights don't show: attention windows, pooling, heads, neck and head flags.
    ref_trunk, our_trunk = reference.image_encoder.trunk, ours.image_encoder.backbone.trunk
    fields = ("window_size", "dim", "dim_out", "q_stride")
    for ref_block, our_block in zip(ref_trunk.blocks, our_trunk.blocks, strict=True):
        assert [getattr(ref_block, f) for f in fields] == [getattr(our_block, f) for f in fields]
        assert ref_block.attn.num_heads == our_block.attn.num_heads
    ref_neck, our_neck = reference.image_encoder.neck, ours.image_encoder.backbone.neck
    assert (ref_neck.fpn_top_down_levels, ref_neck.fpn_interp_model) == (
        our_neck.fpn_top_down_levels, our_neck.fpn_interp_model)  # fmt: skip
    assert reference.image_encoder.scalp == ours.image_encoder.backbone.scalp == 1
    assert reference.use_high_res_features_in_sam and reference.directly_add_no_mem_embed
    assert reference.sam_mask_decoder.iou_prediction_head.sigmoid_output
    assert ours.mask_decoder.iou_prediction_head.sigmoid_output
    assert cfg.model.image_size == ours.info.image.size and reference.hidden_dim == ours.prompt_dim
    print(f"{name}: {sum(p.numel() for p in ours.parameters()):,} parameters")
