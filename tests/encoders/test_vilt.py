"""ViLT through transformers: parity with ViltModel, checkpoint directories, sizes, preprocessing."""

import json
import logging

import numpy as np
import pytest
import torch
from transformers import (
    BertTokenizer,
    ViltConfig,
    ViltForMaskedLM,
    ViltForQuestionAnswering,
    ViltImageProcessor,
    ViltModel,
)

import evf
from evf.checkpoint import CheckpointError
from evf.encoders import build_preprocessor
from evf.encoders.vilt import ARCHITECTURE_FIELDS, IMAGE_EMBEDDINGS, VARIANTS

WORDS = ["the", "red", "blue", "circle", "square", "on", "left", "right", "of", "big", "small", "##s"]
TEXTS = ["the red circle", "small blue squares on the left of the big circle", "circle"]
TINY = ViltConfig(**VARIANTS["vilt_tiny"])


def write_bert_vocab(directory):
    """A tiny BERT WordPiece vocabulary, as ``vocab.txt`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (directory / "vocab.txt").write_text("\n".join(tokens) + "\n")
    return directory


@pytest.fixture(scope="module")
def reference() -> ViltModel:
    torch.manual_seed(0)
    return ViltModel(TINY).eval()


@pytest.fixture
def batch(tmp_path):
    tokens = build_preprocessor("vilt_tiny", write_bert_vocab(tmp_path / "tok")).tokenize(TEXTS)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return pixels, tokens["input_ids"], tokens["attention_mask"], torch.tensor([0, 1, 1])


def _text_alone(ref: ViltModel, ids, mask):
    """The text embeddings fed through ViLT's encoder by hand (no image tokens at all)."""
    emb = ref.embeddings
    x = emb.text_embeddings(input_ids=ids) + emb.token_type_embeddings(torch.zeros_like(ids))
    additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    return ref.pooler(ref.layernorm(ref.encoder(x, attention_mask=additive).last_hidden_state))


def _image_alone(ref: ViltModel, pixels):
    all_pixels = torch.ones(pixels.shape[0], *pixels.shape[2:], dtype=torch.long)
    x, x_mask, _ = ref.embeddings.visual_embed(pixels, all_pixels, max_image_length=-1)
    x = x + ref.embeddings.token_type_embeddings(torch.ones_like(x_mask))
    return ref.pooler(ref.layernorm(ref.encoder(x).last_hidden_state))


def test_early_feature_equals_vilt_pooler_output(reference, tmp_path, batch):
    reference.save_pretrained(tmp_path / "vilt")
    encoder = evf.create_encoder("vilt_tiny", fusion="early", checkpoint=tmp_path / "vilt").eval()
    pixels, ids, mask, index = batch
    with torch.no_grad():
        ours = encoder(pixels, ids, mask, index)
        expected = reference(input_ids=ids, attention_mask=mask, pixel_values=pixels[index]).pooler_output
    assert ours.shape == (3, 32) and encoder.feature_dim == 32
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_text_and_late_features_equal_single_modality_passes(reference, tmp_path, batch):
    reference.save_pretrained(tmp_path / "vilt")
    text = evf.create_encoder("vilt_tiny", fusion="text", checkpoint=tmp_path / "vilt").eval()
    late = evf.create_encoder("vilt_tiny", fusion="late", checkpoint=tmp_path / "vilt").eval()
    pixels, ids, mask, index = batch
    with torch.no_grad():
        expected_text = _text_alone(reference, ids, mask)
        torch.testing.assert_close(text(pixels, ids, mask, index), expected_text, atol=1e-5, rtol=1e-5)
        expected = torch.cat([_image_alone(reference, pixels)[index], expected_text], dim=-1)
        torch.testing.assert_close(late(pixels, ids, mask, index), expected, atol=1e-5, rtol=1e-5)
    assert not any(hasattr(text.vilt.embeddings, name) for name in IMAGE_EMBEDDINGS)


def _legacy_bin(directory, model):
    """dandelin's 2021 layout: pytorch_model.bin with the tied decoder copy and the position_ids buffer."""
    model.save_pretrained(directory)
    (directory / "model.safetensors").unlink()
    ids = torch.arange(TINY.max_position_embeddings)[None]
    state = {**model.state_dict(), "vilt.embeddings.text_embeddings.position_ids": ids}
    torch.save(state, directory / "pytorch_model.bin")


@pytest.mark.parametrize("layout", ["mlm_safetensors", "mlm_legacy_bin", "vqa"])
@pytest.mark.parametrize("fusion", ["text", "early"])
def test_vilt_for_task_directories_load_into_every_mode(tmp_path, layout, fusion):
    if layout == "vqa":
        model = ViltForQuestionAnswering(ViltConfig(**VARIANTS["vilt_tiny"], id2label={0: "no", 1: "yes"}))
        model.save_pretrained(tmp_path / layout)
    elif layout == "mlm_legacy_bin":
        model = ViltForMaskedLM(TINY)
        _legacy_bin(tmp_path / layout, model)
    else:
        model = ViltForMaskedLM(TINY)
        model.save_pretrained(tmp_path / layout)
    encoder = evf.create_encoder("vilt_tiny", fusion=fusion, checkpoint=tmp_path / layout)
    for key, value in encoder.vilt.state_dict().items():
        torch.testing.assert_close(value, model.vilt.state_dict()[key], rtol=0, atol=0)


def test_unknown_key_and_other_architecture_are_named(reference, tmp_path):
    directory = tmp_path / "vilt"
    reference.save_pretrained(directory)
    (directory / "model.safetensors").unlink()
    torch.save({**reference.state_dict(), "itm_head.weight": torch.zeros(2)}, directory / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="itm_head.weight"):
        evf.create_encoder("vilt_tiny", checkpoint=directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    with pytest.raises(CheckpointError, match="hidden_act='relu'"):
        evf.create_encoder("vilt_tiny", checkpoint=directory)
    with pytest.raises(FileNotFoundError, match="config.json"):
        evf.create_encoder("vilt_tiny", checkpoint=tmp_path)


def test_full_size_counts_equal_vilt_model():
    with torch.device("meta"):
        ref = ViltModel(ViltConfig())
        counts = {
            f: sum(p.numel() for p in evf.create_encoder("vilt_b32", fusion=f).parameters())
            for f in ("text", "late", "early")
        }
    total = sum(p.numel() for p in ref.parameters())
    embeddings = ref.embeddings.named_parameters()
    image = sum(p.numel() for n, p in embeddings if n.partition(".")[0] in IMAGE_EMBEDDINGS)
    assert counts == {"text": total - image, "late": total, "early": total}
    ours, default = ViltConfig(**VARIANTS["vilt_b32"]), ViltConfig()  # the defaults are vilt-b32-mlm's
    assert all(getattr(ours, k) == getattr(default, k) for k in ARCHITECTURE_FIELDS)


@pytest.mark.parametrize(
    "name,processor", [("vilt_b32", {}), ("vilt_tiny", {"size": {"shortest_edge": 32}, "size_divisor": 8})]
)
def test_square_images_match_vilt_image_processor(name, processor):
    y, x = np.mgrid[0:60, 0:60]
    image = np.stack([128 + 100 * np.sin(x / 7), 128 + 100 * np.cos(y / 9), 2 * (x + y)], -1).clip(0, 255)
    image = image.astype(np.uint8)
    expected = ViltImageProcessor(**processor)(images=image, return_tensors="pt")["pixel_values"][0]
    # the processor resizes uint8 images, so it rounds to whole levels: one level is 1 / 127.5 here
    ours = build_preprocessor(name).transform_image(image)
    torch.testing.assert_close(ours, expected, atol=1 / 127.5, rtol=0)


def test_tokenizer_reads_the_directory_and_truncates_to_40(tmp_path, caplog):
    directory = write_bert_vocab(tmp_path)
    tokenizer = build_preprocessor("vilt_tiny", directory).tokenizer
    out = tokenizer(TEXTS)
    expected = BertTokenizer.from_pretrained(str(directory))(TEXTS, padding="longest", return_tensors="pt")
    assert torch.equal(out["input_ids"], expected["input_ids"])
    assert torch.equal(out["attention_mask"], expected["attention_mask"])
    with caplog.at_level(logging.WARNING):
        long = tokenizer(["red " * 60])
    assert long["input_ids"].shape == (1, 40) and long["input_ids"][0, -1] == 3  # [SEP] kept
    assert "truncated 1" in caplog.text
    with pytest.raises(ValueError, match="dandelin/vilt-b32-mlm"):
        build_preprocessor("vilt_b32").tokenize(["the red circle"])
    with pytest.raises(TypeError, match="hidden_sise"):
        evf.create_encoder("vilt_tiny", hidden_sise=64)
