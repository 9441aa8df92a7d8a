import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import evf
from evf.checkpoint import CheckpointError
from evf.preprocessing import longest_side_size
from evf.sam_backends import PointPrompts
from evf.sam_backends.sam import SAM_PIXEL_MEAN, SAM_PIXEL_STD

# The official layout, read off yformer/EfficientSAM@d525f62 `build_efficient_sam_vit{t,s}()` built on
# the meta device: tensor count and parameter count of the whole state dict, and a few keys.
OFFICIAL = {
    "efficient_sam_vitt": dict(tensors=278, parameters=10_223_204, width=192),
    "efficient_sam_vits": dict(tensors=278, parameters=26_413_028, width=384),
}
OFFICIAL_SHAPES = {
    "image_encoder.patch_embed.proj.weight": ("width", 3, 16, 16),
    "image_encoder.pos_embed": (1, 197, "width"),
    "image_encoder.blocks.11.attn.qkv.weight": ("3width", "width"),
    "image_encoder.blocks.11.mlp.fc2.weight": ("width", "4width"),
    "image_encoder.neck.0.weight": (256, "width", 1, 1),
    "image_encoder.neck.2.weight": (256, 256, 3, 3),
    "image_encoder.neck.3.bias": (256,),
    "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (2, 128),
    "prompt_encoder.invalid_points.weight": (1, 256),
    "prompt_encoder.bbox_bottom_right_embeddings.weight": (1, 256),
    "mask_decoder.transformer.layers.0.mlp.layers.0.0.weight": (2048, 256),
    "mask_decoder.transformer.layers.1.mlp.fc.weight": (256, 2048),
    "mask_decoder.transformer.layers.1.cross_attn_image_to_token.q_proj.weight": (128, 256),
    "mask_decoder.transformer.final_attn_token_to_image.out_proj.weight": (256, 128),
    "mask_decoder.final_output_upscaling_layers.0.0.weight": (256, 64, 2, 2),
    "mask_decoder.final_output_upscaling_layers.0.1.weight": (64,),
    "mask_decoder.final_output_upscaling_layers.1.0.weight": (64, 32, 2, 2),
    "mask_decoder.output_hypernetworks_mlps.3.layers.1.0.weight": (256, 256),
    "mask_decoder.output_hypernetworks_mlps.3.fc.weight": (32, 256),
    "mask_decoder.iou_prediction_head.layers.1.0.weight": (256, 256),
    "mask_decoder.iou_prediction_head.fc.weight": (4, 256),
}


def _shape(template: tuple, width: int) -> tuple[int, ...]:
    sizes = {"width": width, "3width": 3 * width, "4width": 4 * width}
    return tuple(sizes.get(d, d) for d in template)


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_full_size_has_the_official_layout_on_meta_device(name):
    with torch.device("meta"):
        backend = evf.create_backend(name)
    state = backend.sam.state_dict()
    expected = OFFICIAL[name]
    assert len(state) == expected["tensors"]
    assert sum(p.numel() for p in backend.parameters()) == expected["parameters"]
    for key, template in OFFICIAL_SHAPES.items():
        assert tuple(state[key].shape) == _shape(template, expected["width"]), key
    print(f"{name}: {expected['parameters']:,} parameters")


def test_outputs_at_1024_on_meta_device():
    with torch.device("meta"):
        backend = evf.create_backend("efficient_sam_vitt")
        features = backend.encode_image(torch.zeros(2, 3, 1024, 1024))
        points = PointPrompts(torch.zeros(3, 2, 2), torch.ones(3, 2, dtype=torch.long))
        out = backend.decode(features, torch.tensor([0, 1, 1]), torch.zeros(3, 1, 256), points=points)
        masks = backend.postprocess(out.logits[:2], (1024, 1024), (480, 640))
    assert features["image_embeddings"].shape == (2, 256, 64, 64)
    assert out.logits.shape == (3, 1, 256, 256) and out.iou.shape == (3, 1)
    assert masks.shape == (2, 480, 640)


def _outputs(backend, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(2, 3, 128, 128, generator=g)
    text = torch.randn(3, 1, backend.prompt_dim, generator=g)
    points = PointPrompts(torch.rand(3, 2, 2, generator=g) * 128, torch.tensor([[1, 0], [1, -1], [0, 1]]))
    with torch.no_grad():
        features = backend.encode_image(pixels)
        return backend.decode(features, torch.tensor([0, 0, 1]), text, points=points)


def test_official_layout_checkpoint_round_trips(tmp_path):
    source = evf.create_backend("efficient_sam_tiny").eval()
    path = tmp_path / "efficient_sam_tiny.pt"
    torch.save({"model": source.sam.state_dict()}, path)  # the official container
    loaded = evf.create_backend("efficient_sam_tiny", checkpoint=path).eval()
    for key, value in source.sam.state_dict().items():
        assert torch.equal(loaded.sam.state_dict()[key], value), key
    a, b = _outputs(source), _outputs(loaded)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.iou, b.iou)
    assert a.logits.shape == (3, 1, 32, 32)


def test_checkpoint_with_wrong_keys_names_them(tmp_path):
    state = evf.create_backend("efficient_sam_tiny").sam.state_dict()
    state["mask_decoder.extra_head.weight"] = torch.zeros(1)
    del state["prompt_encoder.invalid_points.weight"]
    path = tmp_path / "bad.pt"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as err:
        evf.create_backend("efficient_sam_tiny", checkpoint=path)
    assert "mask_decoder.extra_head.weight" in str(err.value)
    assert "prompt_encoder.invalid_points.weight" in str(err.value)
    state["decoder_max_num_input_points"] = torch.tensor(6)
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match="decoder_max_num_input_points"):
        evf.create_backend("efficient_sam_tiny", checkpoint=path)


def test_preprocessing_is_evf_sam_two_step_resize():
    spec = evf.create_backend("efficient_sam_tiny").info.image
    image = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    # EVF-SAM: ResizeLongestSide(S).apply_image (PIL bilinear), SAM mean/std, bilinear to S x S.
    h, w = longest_side_size(100, 150, spec.size)
    resized = torch.from_numpy(
        np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR)).copy()
    )
    x = (resized.permute(2, 0, 1).float() - torch.tensor(SAM_PIXEL_MEAN).view(3, 1, 1)) / torch.tensor(
        SAM_PIXEL_STD
    ).view(3, 1, 1)
    expected = F.interpolate(x[None], (spec.size, spec.size), mode="bilinear")[0]
    torch.testing.assert_close(spec(image), expected, atol=1e-5, rtol=0)
    assert spec.resized_size(100, 150) == (spec.size, spec.size)


def test_more_points_than_the_decoder_takes_is_an_error():
    backend = evf.create_backend("efficient_sam_tiny")
    features = backend.encode_image(torch.zeros(1, 3, 128, 128))
    points = PointPrompts(torch.zeros(1, 7, 2), torch.ones(1, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="at most 6 points"):
        backend.decode(features, torch.zeros(1, dtype=torch.long), None, points=points)
