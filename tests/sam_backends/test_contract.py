"""What every registered backend promises, checked on its tiny variant (and, built on the meta device,
on every full-size one). A new backend gets these tests by registering a ``*tiny*`` variant."""

import numpy as np
import pytest
import torch

import evf
from evf.checkpoint import CheckpointFormat
from evf.sam_backends import BACKENDS, PointPrompts

TINY = evf.list_backends("*tiny*")
FULL = [name for name in evf.list_backends() if "tiny" not in name]
TEXTS = ["the red circle", "a blue square", "the small triangle"]
IMAGE_INDEX = torch.tensor([0, 1, 1])


def _batch(model: evf.EVFSAM) -> dict:
    """Two images (different sizes) with three expressions, preprocessed as the data side does."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size, dtype=np.uint8) for size in ((90, 120, 3), (70, 50, 3))]
    tokens = model.encoder.preprocessor.tokenize(TEXTS)
    return dict(
        sam_pixels=torch.stack([model.backend.info.image(im) for im in images]),
        encoder_pixels=torch.stack([model.encoder.preprocessor.transform_image(im) for im in images]),
        input_ids=tokens["input_ids"],
        attention_mask=tokens["attention_mask"],
        image_index=IMAGE_INDEX,
    )


def _decode(model: evf.EVFSAM, batch: dict, points: PointPrompts | None = None):
    """The model's parts in decode's order: image features, prompt tokens, the backend's decoder."""
    features = model.encode_images(batch["sam_pixels"])
    inputs = (batch["encoder_pixels"], batch["input_ids"], batch["attention_mask"], batch["image_index"])
    return model.backend.decode(features, batch["image_index"], model.prompt_tokens(*inputs), points=points)


def _point_prompts(size: int) -> PointPrompts:
    coords = torch.tensor([[[0.3, 0.4]], [[0.7, 0.2]], [[0.5, 0.9]]]) * size
    return PointPrompts(coords=coords, labels=torch.ones(3, 1, dtype=torch.long))


@pytest.mark.parametrize("name", TINY)
def test_registered_info_is_the_built_backends(name):
    backend = evf.create_backend(name)
    assert backend.info == BACKENDS.info(name)
    assert backend.prompt_dim == backend.info.prompt_dim


@pytest.mark.parametrize("name", TINY)
def test_image_features_carry_no_graph_unless_the_image_encoder_trains(name):
    frozen = evf.create_model("beit3_tiny", name).train()
    pixels = _batch(frozen)["sam_pixels"]
    features = frozen.encode_images(pixels)
    assert features and all(f.shape[0] == 2 and not f.requires_grad for f in features.values())
    assert not frozen.backend.image_encoder.training
    training = evf.create_model("beit3_tiny", name, trainable=evf.TrainableParts(image_encoder=True)).train()
    assert any(f.requires_grad for f in training.encode_images(pixels).values())


@pytest.mark.parametrize("name", TINY)
def test_text_tokens_decode_to_one_mask_per_expression(name):
    model = evf.create_model("beit3_tiny", name).eval()
    with torch.no_grad():
        out = _decode(model, _batch(model))
    n, one, h, w = out.logits.shape
    assert (n, one) == (3, 1) and h == w
    assert out.iou.shape == (3, 1)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.iou).all()


@pytest.mark.parametrize("name", TINY)
def test_decoding_images_together_equals_one_by_one(name):
    backend = evf.create_backend(name).eval()
    size = backend.info.image.size
    pixels = torch.randn(2, 3, size, size)
    text = torch.randn(3, 1, backend.prompt_dim)
    with torch.no_grad():
        features = backend.encode_image(pixels)
        together = backend.decode(features, IMAGE_INDEX, text)
        single = [
            backend.decode(
                {k: v[i : i + 1] for k, v in features.items()},
                torch.zeros(1, dtype=torch.long),
                text[n : n + 1],
            )
            for n, i in enumerate(IMAGE_INDEX.tolist())
        ]
    torch.testing.assert_close(together.logits, torch.cat([s.logits for s in single]), atol=1e-5, rtol=0)
    torch.testing.assert_close(together.iou, torch.cat([s.iou for s in single]), atol=1e-5, rtol=0)


def _grads(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad for p in module.parameters() if p.grad is not None]


@pytest.mark.parametrize("name", TINY)
def test_gradients_reach_the_trainable_parts_only(name):
    model = evf.create_model("beit3_tiny", name).train()  # default: SAM image encoder frozen
    out = _decode(model, _batch(model), points=_point_prompts(model.backend.info.image.size))
    (out.logits.square().mean() + out.iou.sum()).backward()
    for part in ("encoder", "projector", "prompt_encoder", "mask_decoder"):
        grads = _grads(model.parts()[part])
        assert grads and any(g.abs().sum() > 0 for g in grads), part
        assert all(torch.isfinite(g).all() for g in grads), part
    assert not _grads(model.backend.image_encoder)


@pytest.mark.parametrize("name", TINY)
def test_text_gradients_pass_through_a_frozen_decoder(name):
    trainable = evf.TrainableParts(prompt_encoder=False, mask_decoder=False)
    model = evf.create_model("beit3_tiny", name, trainable=trainable).train()
    _decode(model, _batch(model)).logits.square().mean().backward()
    assert _grads(model.projector) and _grads(model.encoder)
    for part in ("image_encoder", "prompt_encoder", "mask_decoder"):
        assert not _grads(model.parts()[part]), part
        assert not model.parts()[part].training, part


@pytest.mark.parametrize("name", TINY)
def test_postprocess_returns_logits_at_the_original_size(name):
    backend = evf.create_backend(name)
    low_res = torch.randn(2, 1, backend.info.image.size // 4, backend.info.image.size // 4)
    original = (37, 53)
    input_size = backend.info.image.resized_size(*original)
    assert backend.postprocess(low_res, input_size, original).shape == (2, 37, 53)


@pytest.mark.parametrize("name", TINY)
def test_fixed_and_unknown_options_are_refused(name):
    with pytest.raises(TypeError, match=r"unknown or fixed option\(s\) \['no_such_option', 'prompt_dim'\]"):
        evf.create_backend(name, prompt_dim=8, no_such_option=1)


@pytest.mark.parametrize("name", [n for n in TINY if BACKENDS.info(n).release is not None])
def test_release_export_rules_invert_the_official_format(name):
    """What ``evf export`` writes for the inner module loads back through the family's own format."""
    backend = evf.create_backend(name)
    layout = backend.info.release
    state = backend.core_module.state_dict()
    official = CheckpointFormat("export", layout.export_rules).remap(state)
    assert layout.marker in official
    back = layout.format.remap(official)
    assert back.keys() == state.keys() and all(back[k] is state[k] for k in state)


@pytest.mark.parametrize("name", FULL)
def test_full_size_builds_on_the_meta_device(name):
    with torch.device("meta"):
        backend = evf.create_backend(name)
    params = list(backend.parameters())
    assert params and all(p.is_meta for p in params)
    assert backend.info == BACKENDS.info(name)
    assert backend.info.image.size == 1024 and backend.prompt_dim == 256
    print(f"{name}: {sum(p.numel() for p in params):,} parameters")
