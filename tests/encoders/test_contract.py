"""The encoder contract, for every registered encoder and every fusion mode of its family.

A new family adds its modes to `MODES` (and, if its tokenizer needs files, a writer to
`TOKENIZER_FILES`); the tests then cover its tiny variants and build its full-size ones on the
``meta`` device.
"""

import numpy as np
import pytest
import torch

import evf
from evf.encoders import ENCODERS, build_preprocessor
from tests.encoders.test_vilt import write_bert_vocab

MODES = {
    "beit3": {
        "text": {"fusion": "text", "feature": "cls_text"},
        "late": {"fusion": "late", "feature": "concat"},
        "early": {"fusion": "early"},
    },
    "clip": {"text": {"fusion": "text"}, "late": {"fusion": "late"}},
    "vilt": {"text": {"fusion": "text"}, "late": {"fusion": "late"}, "early": {"fusion": "early"}},
}
"""Encoder kwargs of each fusion mode, per family."""
TOKENIZER_FILES = {"vilt": write_bert_vocab}
"""Families whose tokenizer is read from files: a writer of a tiny one into a directory."""
TEXTS = ["the red circle", "the small blue square on the left", "circle", "the big circle on the right"]


def _cases(pattern: str) -> list:
    return [
        pytest.param(name, mode, id=f"{name}-{mode}")
        for name in evf.list_encoders(pattern)
        for mode in MODES[ENCODERS.info(name).family]
    ]


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    """``name -> (pixels, input_ids, attention_mask, image_index)`` made by the encoder's own
    preprocessor: 2 images, 4 expressions (built once per encoder)."""
    cache = {}

    def get(name: str):
        if name not in cache:
            family = ENCODERS.info(name).family
            writer = TOKENIZER_FILES.get(family)
            pre = build_preprocessor(name, writer(tmp_path_factory.mktemp(name)) if writer else None)
            rng = np.random.default_rng(0)
            images = [rng.integers(0, 256, size, dtype=np.uint8) for size in ((48, 64, 3), (70, 40, 3))]
            tokens = pre.tokenize(TEXTS)
            pixels = torch.stack([pre.transform_image(image) for image in images])
            cache[name] = pixels, tokens["input_ids"], tokens["attention_mask"], torch.tensor([0, 1, 1, 0])
        return cache[name]

    return get


def test_every_family_declares_its_modes():
    assert {ENCODERS.info(name).family for name in evf.list_encoders()} <= set(MODES)


@pytest.mark.parametrize("name,mode", _cases("*tiny*"))
def test_forward_backward_shapes_and_every_parameter_learns(name, mode, batches):
    encoder = evf.create_encoder(name, **MODES[ENCODERS.info(name).family][mode])
    pixels, ids, mask, index = batches(name)
    out = encoder(pixels, ids, mask, index)
    assert out.shape == (len(TEXTS), encoder.feature_dim) and torch.isfinite(out).all()
    out.square().sum().backward()
    no_grad = [n for n, p in encoder.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert no_grad == []
    model = evf.create_model(encoder, "sam_tiny")
    assert model.projector[0].in_features == encoder.feature_dim


@pytest.mark.parametrize("name,mode", _cases("*tiny*"))
def test_expressions_do_not_depend_on_their_batch(name, mode, batches):
    encoder = evf.create_encoder(name, **MODES[ENCODERS.info(name).family][mode]).eval()
    pixels, ids, mask, index = batches(name)
    with torch.no_grad():
        together = encoder(pixels, ids, mask, index)
        for n in range(len(TEXTS)):
            length = int(mask[n].sum())
            alone = encoder(
                pixels[index[n : n + 1]],
                ids[n : n + 1, :length],
                mask[n : n + 1, :length],
                torch.zeros(1, dtype=torch.long),
            )
            torch.testing.assert_close(together[n : n + 1], alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", evf.list_encoders("*tiny*"))
def test_late_concatenates_image_and_text(name):
    modes = MODES[ENCODERS.info(name).family]
    dims = {m: evf.create_encoder(name, **modes[m]).feature_dim for m in ("text", "late")}
    assert dims["late"] == 2 * dims["text"]


@pytest.mark.parametrize("name,mode", _cases("*"))
def test_full_size_builds_on_the_meta_device(name, mode):
    with torch.device("meta"):
        encoder = evf.create_encoder(name, **MODES[ENCODERS.info(name).family][mode])
    assert encoder.feature_dim > 0 and all(p.is_meta for p in encoder.parameters())


@pytest.mark.parametrize("family", ["beit3", "clip", "vilt"])
def test_every_family_builder_has_the_signature_docs_adding_an_encoder_gives(family):
    import importlib
    import inspect

    module = importlib.import_module(f"evf.encoders.{family}")
    params = inspect.signature(getattr(module, f"_create_{family}")).parameters
    assert list(params)[0] == "variant"
    for name in ("tokenizer", "checkpoint"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY and params[name].default is None
    assert params["fusion"].kind is inspect.Parameter.KEYWORD_ONLY
    assert list(params.values())[-1].kind is inspect.Parameter.VAR_KEYWORD  # **overrides
    for name in evf.list_encoders(f"{family}_*"):
        factory = inspect.signature(evf.encoders.ENCODERS.get(name).factory)
        assert [p.kind for p in factory.parameters.values()] == [inspect.Parameter.VAR_KEYWORD], name
