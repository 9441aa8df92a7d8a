"""Each family's pretraining objective learns, and writes an encoder that its factory loads strictly."""

import json
from pathlib import Path

import pytest
import torch

import evf
from evf.datamodules.captions import ShapesCaptions
from evf.datamodules.shapes.tokenizer import write_shapes_wordpiece
from evf.encoders.beit3.fusion import TEXT
from evf.encoders.pretraining import build_objective, whole_word_mask, word_numbers
from evf.tools.pretrain_data import CaptionBatcher

FAMILIES = ("beit3_tiny", "clip_tiny", "vilt_tiny")
MODES = {
    "beit3_tiny": ("text", "late", "early"),
    "clip_tiny": ("text", "late"),
    "vilt_tiny": ("text", "late", "early"),
}


def _tokenizer(name: str, tmp_path: Path) -> Path | None:
    if name != "vilt_tiny":
        return None
    tmp_path.mkdir(parents=True, exist_ok=True)
    write_shapes_wordpiece(tmp_path)
    return tmp_path


def _batch(objective, count: int = 8):
    batcher = CaptionBatcher(objective, ShapesCaptions(count, seed=3), list(range(count)), seed=3)
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
    written = objective.save(tmp_path / ("out" if name == "vilt_tiny" else "out.pt"))
    trained = objective.encoder.state_dict()
    for fusion in MODES[name]:
        loaded = evf.create_encoder(name, checkpoint=written, tokenizer=tokenizer, fusion=fusion).state_dict()
        assert loaded and all(torch.equal(loaded[k], trained[k]) for k in loaded), fusion
    again = build_objective(name, tokenizer, pretrained=written).state_dict()  # encoder and heads
    assert again.keys() == objective.state_dict().keys()
    assert all(torch.equal(again[k], v) for k, v in objective.state_dict().items())


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


def test_beit3_masks_the_always_masked_words_wherever_they_occur_and_refuses_a_split_one():
    objective = build_objective(
        "beit3_tiny", objective_kwargs={"mask_rate": 0.15, "always_masked": ["top", "left"]}
    )
    captions = ["there is a red circle in the top left", "a blue square sits at the top", "a green shape"]
    ids = objective.encoder.preprocessor.tokenize(captions)["input_ids"]
    place = torch.isin(ids, objective.always_masked_ids)
    assert place.sum(1).tolist() == [2, 1, 0]
    others = torch.zeros_like(place)
    for seed in range(5):
        masked = objective.text_mask(ids, torch.Generator().manual_seed(seed))
        assert masked[place].all()
        others |= masked & ~place
    assert others.sum(1).gt(0).all()  # the rate's words come on top, in every caption
    plain = build_objective("beit3_tiny")
    assert not plain.text_mask(ids, torch.Generator().manual_seed(0))[place].all()  # without: by chance
    with pytest.raises(ValueError, match="'middle' is 7 pieces"):
        build_objective("beit3_tiny", objective_kwargs={"always_masked": ["middle"]})


def test_shapes_captions_draw_scenes_of_the_asked_object_counts():
    counts = {len(ShapesCaptions(30, seed=0, num_objects=(1, 2)).scene(i)[1]) for i in range(30)}
    assert counts == {1, 2}
    assert {len(ShapesCaptions(10, seed=0).scene(i)[1]) for i in range(10)} <= {3, 4, 5}


def test_beit3_masks_patches_in_blocks_and_predicts_their_quantised_colour():
    from evf.encoders.beit3.pretraining import VISUAL_TOKENS, block_mask, visual_tokens

    masks = block_mask(4, 8, 0.4, torch.Generator().manual_seed(1))
    assert masks.shape == (4, 64) and all(26 <= int(m.sum()) <= 40 for m in masks)
    assert not torch.equal(masks[0], masks[1])
    pixels = torch.full((1, 3, 16, 16), -1.0)  # black, normalised to [-1, 1]
    pixels[0, 0, :6, :8] = 1.0  # the top-left patch is red over 3/4 of it, black elsewhere
    pixels[0, :, 8:, 8:] = 1.0  # the bottom-right patch is white
    tokens = visual_tokens(pixels, patch_size=8)
    red, black, white = 3 * 16, 0, VISUAL_TOKENS - 1
    assert tokens.tolist() == [[red, black, black, white]]


SHIPPED = {  # probe number -> the least gain over the random init on 20 held-out scenes
    "beit3_tiny": {"mlm_accuracy": 0.5, "mim_accuracy": 0.5},
    "clip_tiny": {"image_to_text_r1": 0.05, "text_to_image_r1": 0.05},
    "vilt_tiny": {"mlm_accuracy": 0.4},
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_each_shipped_encoder_loads_strictly_and_beats_its_random_init_on_the_probe(name):
    from evf.assets import BEIT3_TINY_SHAPES, CLIP_TINY_SHAPES, VILT_TINY_SHAPES
    from evf.tools.pretrain_data import probe

    path = {"beit3_tiny": BEIT3_TINY_SHAPES, "clip_tiny": CLIP_TINY_SHAPES, "vilt_tiny": VILT_TINY_SHAPES}[
        name
    ]
    tokenizer = path if name == "vilt_tiny" else None
    files = [path] if path.is_file() else list(path.iterdir())
    assert files and sum(f.stat().st_size for f in files) <= 10 * 2**20
    card = json.loads(path.with_name(f"{path.stem}.json").read_text())
    assert card["encoder"] == name and card["command"].startswith("evf pretrain-encoder")
    architecture = card.get("encoder_kwargs", {})  # what a config passes as model.encoder_kwargs
    for fusion in MODES[name]:  # what a config's encoder_checkpoint does, in every mode
        evf.create_encoder(name, checkpoint=path, tokenizer=tokenizer, fusion=fusion, **architecture)
    scenes = ShapesCaptions(20, seed=0, split="val")
    numbers = {}
    for label, pretrained in (("pretrained", path), ("random init", None)):
        torch.manual_seed(0)
        objective = build_objective(name, tokenizer, pretrained=pretrained, encoder_kwargs=architecture)
        numbers[label] = probe(
            objective, CaptionBatcher(objective, scenes, list(range(20)), seed=1), batch_size=20
        )
    for metric, gain in SHIPPED[name].items():
        assert numbers["pretrained"][metric] >= numbers["random init"][metric] + gain, (metric, numbers)
