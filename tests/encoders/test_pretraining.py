"""Each family's pretraining objective learns, and writes an encoder that its factory loads strictly."""

from pathlib import Path

import pytest
import torch

import evf
from evf.datamodules.captions import ShapesCaptions
from evf.datamodules.shapes.tokenizer import write_shapes_wordpiece
from evf.encoders.beit3.fusion import TEXT
from evf.encoders.pretraining import build_objective, whole_word_mask, word_numbers
from evf.tools.pretrain_encoder import _Batcher

FAMILIES = ("beit3_tiny", "clip_tiny", "vilt_tiny")
MODES = {"beit3_tiny": ("text", "late", "early"), "clip_tiny": ("text", "late"), "vilt_tiny": ("text", "late", "early")}


def _tokenizer(name: str, tmp_path: Path) -> Path | None:
    if name != "vilt_tiny":
        return None
    tmp_path.mkdir(parents=True, exist_ok=True)
    write_shapes_wordpiece(tmp_path)
    return tmp_path


def _batch(objective, count: int = 8):
    batcher = _Batcher(objective, ShapesCaptions(count, seed=3), list(range(count)), seed=3)
    return batcher.batch(list(range(count)), step=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_a_few_steps_lower_the_loss(name, tmp_path):
    objective = build_objective(name, _tokenizer(name, tmp_path))
    batch = _batch(objective)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        torch.manual_seed(0)  # the same masks, negatives and ViLT patch draws every step
        loss = objective(batch, torch.Generator().manual_seed(0))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("name", FAMILIES)
def test_the_written_encoder_loads_strictly_in_every_fusion_mode(name, tmp_path):
    tokenizer = _tokenizer(name, tmp_path / "tok")
    objective = build_objective(name, tokenizer)
    with torch.no_grad():
        for p in objective.encoder.parameters():
            p.add_(torch.randn_like(p))  # differ from any random init
    written = objective.save_encoder(tmp_path / ("out" if name == "vilt_tiny" else "out.pt"))
    trained = objective.encoder.state_dict()
    for fusion in MODES[name]:
        loaded = evf.create_encoder(name, checkpoint=written, tokenizer=tokenizer, fusion=fusion).state_dict()
        assert loaded and all(torch.equal(loaded[k], trained[k]) for k in loaded), fusion


def test_beit3_masks_whole_words_and_predicts_them_from_the_image():
    objective = build_objective("beit3_tiny")
    tokenizer = objective.encoder.preprocessor.tokenizer
    ids = tokenizer(["there is a red circle", "a blue square"])["input_ids"]
    words = word_numbers(ids, objective.starts, objective.specials)
    assert words[0].tolist()[0] == -1 and words[0].max() == 4 and words[1].max() == 2  # 5 and 3 words
    masked = whole_word_mask(words, 0.5, torch.Generator().manual_seed(0))
    for row in range(2):  # a word is masked whole or not at all; specials and padding never
        for w in range(int(words[row].max()) + 1):
            assert masked[row][words[row] == w].unique().numel() == 1
        assert not masked[row][words[row] == -1].any()
    assert masked.sum(1).gt(0).all()
    batch = _batch(objective, 2)
    logits = objective.masked_word_logits(batch, torch.zeros_like(batch.input_ids, dtype=torch.bool))
    other = batch.pixels.flip(0)
    swapped = objective.masked_word_logits(
        type(batch)(other, batch.input_ids, batch.attention_mask, batch.texts),
        torch.zeros_like(batch.input_ids, dtype=torch.bool),
    )
    assert not torch.allclose(logits, swapped)  # the text side reads the image (every layer joint)
    assert objective.encoder.plan.normed == ("vision", TEXT)
