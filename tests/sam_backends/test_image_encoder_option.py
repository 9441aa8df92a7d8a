"""``image_encoder=False`` (embedding-cache mode) and the image-encoder identity of every backend."""

import pytest
import torch

import evf
from evf.sam_backends import create_backend

from .official import save_official

TINY = evf.list_backends("*tiny*")


def _pixels(backend, n: int = 2) -> torch.Tensor:
    size = backend.info.image.size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", TINY)
def test_feature_shapes_are_what_encode_image_returns(name):
    backend = create_backend(name).eval()
    with torch.no_grad():
        features = backend.encode_image(_pixels(backend))
    assert {k: tuple(v.shape[1:]) for k, v in features.items()} == backend.feature_shapes()


@pytest.mark.parametrize("name", TINY)
def test_without_image_encoder_the_rest_loads_and_decodes_alike(name, tmp_path):
    full = create_backend(name).eval()
    path = save_official(full, tmp_path / "weights.pt")
    light = create_backend(name, checkpoint=path, image_encoder=False).eval()
    assert not light.has_image_encoder and full.has_image_encoder
    assert not list(light.image_encoder.parameters())
    assert light.image_encoder_hash() == full.image_encoder_hash()
    with torch.no_grad():
        features = full.encode_image(_pixels(full))
        text = torch.randn(3, 1, full.prompt_dim)
        index = torch.tensor([0, 1, 1])
        expected = full.decode(features, index, text).logits
        assert torch.equal(light.decode(features, index, text).logits, expected)
    with pytest.raises(RuntimeError, match="without its image encoder"):
        light.encode_image(_pixels(full))


@pytest.mark.parametrize("name", TINY)
def test_encode_image_reads_only_the_hashed_image_encoder(name):
    """The weights hash covers everything encode_image uses: changing any other tensor of the
    backend leaves the features alone, changing an image-encoder tensor changes the hash."""
    backend = create_backend(name).eval()
    pixels = _pixels(backend)
    with torch.no_grad():
        before = backend.encode_image(pixels)
        hash_before = backend.image_encoder_hash()
        encoder_params = {id(p) for p in backend.image_encoder.parameters()}
        for p in backend.parameters():
            if id(p) not in encoder_params:
                p.add_(1.0)
        after = backend.encode_image(pixels)
        assert all(torch.equal(before[k], after[k]) for k in before)
        assert backend.image_encoder_hash() == hash_before
        next(backend.image_encoder.parameters()).view(-1)[0] += 1e-3
        assert backend.image_encoder_hash() != hash_before


def test_unknown_weights_cannot_be_hashed():
    with pytest.raises(ValueError, match="backend checkpoint"):
        create_backend("sam_tiny", image_encoder=False).image_encoder_hash()
