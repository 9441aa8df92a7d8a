import numpy as np
import pytest
import torch
from segment_anything import SamPredictor, sam_model_registry

import evf
from evf.checkpoint import CheckpointError
from evf.sam_backends import PointPrompts


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("size", [(100, 150), (160, 90)])
def test_points_only_matches_sam_predictor(size):
    backend = evf.create_backend("sam_tiny").eval()
    image = _image(*size)
    coords = np.array([[30.0, 40.0], [70.0, 20.0]])
    labels = np.array([1, 0])

    predictor = SamPredictor(backend.sam)
    predictor.set_image(image)
    ref_logits, ref_iou, ref_low = predictor.predict(
        coords, labels, multimask_output=False, return_logits=True
    )

    with torch.no_grad():
        features = backend.encode_image(backend.info.image(image)[None])
        points = PointPrompts(
            coords=backend.info.image.transform_coords(torch.tensor(coords, dtype=torch.float32)[None], size),
            labels=torch.tensor(labels)[None],
        )
        out = backend.decode(features, torch.zeros(1, dtype=torch.long), None, points=points)
        logits = backend.postprocess(out.logits, backend.info.image.resized_size(*size), size)

    torch.testing.assert_close(out.logits[0].numpy(), ref_low, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits.numpy(), ref_logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.iou[0].numpy(), ref_iou, atol=1e-5, rtol=0)


def test_decode_batches_images_like_one_by_one():
    backend = evf.create_backend("sam_tiny").eval()
    pixels = torch.stack([backend.info.image(_image(120, 128, s)) for s in range(2)])
    text = torch.randn(3, 1, backend.prompt_dim)
    index = torch.tensor([0, 1, 1])
    with torch.no_grad():
        features = backend.encode_image(pixels)
        together = backend.decode(features, index, text).logits
        single = [backend.decode({"image_embeddings": features["image_embeddings"][i : i + 1]},
                                 torch.zeros(1, dtype=torch.long), text[n : n + 1]).logits
                  for n, i in enumerate(index.tolist())]  # fmt: skip
    torch.testing.assert_close(together, torch.cat(single), atol=1e-5, rtol=0)


def test_official_checkpoint_loads_strictly(tmp_path):
    source = evf.create_backend("sam_tiny")
    path = tmp_path / "sam_tiny.pth"
    torch.save(source.sam.state_dict(), path)
    loaded = evf.create_backend("sam_tiny", checkpoint=path)
    for key, value in source.sam.state_dict().items():
        assert torch.equal(loaded.sam.state_dict()[key], value), key


def test_checkpoint_with_wrong_keys_names_them(tmp_path):
    state = evf.create_backend("sam_tiny").sam.state_dict()
    state["mask_decoder.extra_head.weight"] = torch.zeros(1)
    del state["prompt_encoder.no_mask_embed.weight"]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        evf.create_backend("sam_tiny", checkpoint=path)
    message = str(err.value)
    assert "mask_decoder.extra_head.weight" in message
    assert "prompt_encoder.no_mask_embed.weight" in message
    assert str(path) in message


@pytest.mark.parametrize("name", ["sam_vit_b", "sam_vit_l", "sam_vit_h"])
def test_full_size_matches_upstream_architecture_on_meta_device(name):
    with torch.device("meta"):
        ours = evf.create_backend(name)
        reference = sam_model_registry[name.removeprefix("sam_")]()
    ours_shapes = {k: v.shape for k, v in ours.sam.state_dict().items()}
    assert ours_shapes == {k: v.shape for k, v in reference.state_dict().items()}
    assert ours.info.image.size == 1024 and ours.prompt_dim == 256
