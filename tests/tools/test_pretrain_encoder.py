"""``evf pretrain-encoder``: seeded, resumable bit for bit, a card beside the weights, user captions."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import evf
from evf.cli import main
from evf.errors import UsageError
from evf.tools.pretrain_encoder import pretrain_encoder

SMALL = dict(steps=4, batch_size=4, warmup_steps=1, num_train=8, num_probe=3, save_every=1, progress=False)


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_a_resumed_run_writes_the_same_weights_as_an_uninterrupted_one(tmp_path):
    straight = pretrain_encoder("beit3_tiny", tmp_path / "straight.pth", **SMALL)
    assert pretrain_encoder("beit3_tiny", tmp_path / "resumed.pth", stop_after=2, **SMALL) is None
    assert (tmp_path / "resumed.pth.resume.pt").is_file() and not (tmp_path / "resumed.pth").exists()
    resumed = pretrain_encoder("beit3_tiny", tmp_path / "resumed.pth", **SMALL)
    a, b = _weights(tmp_path / "straight.pth"), _weights(tmp_path / "resumed.pth")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "resumed.pth.resume.pt").exists()  # removed once the weights are written
    assert resumed.probe == straight.probe and resumed.random_init_probe == straight.random_init_probe
    card = json.loads((tmp_path / "straight.json").read_text())
    assert (
        card["steps"] == 4 and card["file"] == "straight.pth" and "masked data modelling" in card["objective"]
    )
    assert set(card["probe"]) == {
        "masked_colour_accuracy",
        "masked_colour_in_scene_accuracy",
        "masked_place_accuracy",
        "masked_shape_accuracy",
        "mlm_accuracy",
        "mim_accuracy",
    }
    random_init = evf.create_encoder("beit3_tiny").state_dict()
    loaded = evf.create_encoder("beit3_tiny", checkpoint=tmp_path / "straight.pth").state_dict()
    assert any(not torch.equal(loaded[k], random_init[k]) for k in loaded)


def test_the_command_pretrains_vilt_on_a_jsonl_of_captions(tmp_path, capsys):
    lines = []
    for i in range(10):
        Image.fromarray(np.full((20, 20, 3), 25 * i, np.uint8)).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "caption": f"a {'red' if i % 2 else 'blue'} square"}))
    (tmp_path / "captions.jsonl").write_text("\n".join(lines))
    from evf.datamodules.shapes.tokenizer import write_shapes_wordpiece

    write_shapes_wordpiece(tmp_path)
    out = tmp_path / "vilt"
    main(["pretrain-encoder", "--encoder=vilt_tiny", f"--captions={tmp_path / 'captions.jsonl'}",
          f"--tokenizer={tmp_path}", f"--out={out}", "--steps=2", "--batch_size=4", "--warmup_steps=1",
          "--progress=false"])  # fmt: skip
    card = json.loads((tmp_path / "vilt.json").read_text())
    assert card["data"].startswith("8 images of") and {"itm_accuracy", "mlm_accuracy"} <= set(card["probe"])
    assert {"config.json", "model.safetensors", "vocab.txt"} <= {p.name for p in out.iterdir()}
    evf.create_encoder("vilt_tiny", checkpoint=out, tokenizer=out)


def test_architecture_arguments_reach_the_encoder_and_the_card(tmp_path, capsys):
    architecture = {"sub_ln": False, "position_init": "sincos"}
    masking = {"mask_rate": 0.15, "always_masked": ["top", "bottom", "left", "right"]}
    main(["pretrain-encoder", "--encoder=beit3_tiny", f"--out={tmp_path / 'plain.pth'}",
          f"--encoder_kwargs={json.dumps(architecture)}", f"--objective_kwargs={json.dumps(masking)}",
          "--scene_objects=[1, 5]", "--steps=2", "--batch_size=4", "--warmup_steps=1",
          "--num_train=8", "--num_probe=3", "--progress=false"])  # fmt: skip
    card = json.loads((tmp_path / "plain.json").read_text())
    assert card["encoder_kwargs"] == architecture and card["objective_kwargs"] == masking
    assert "15% of the caption's words masked and every 'top'" in card["objective"]
    assert card["data"].startswith("8 shapes scenes of 1-5 objects")
    weights = _weights(tmp_path / "plain.pth")
    assert weights and not any("inner_attn_ln" in k or "ffn_layernorm" in k for k in weights)
    evf.create_encoder("beit3_tiny", checkpoint=tmp_path / "plain.pth", **architecture)
    with pytest.raises(SystemExit) as exit_:
        main(["pretrain-encoder", f"--out={tmp_path / 'o.pth'}", '--encoder_kwargs={"sub_lm": false}',
              "--progress=false"])  # fmt: skip
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--encoder_kwargs" in err and "sub_lm" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_:
        main(["pretrain-encoder", f"--out={tmp_path / 'o.pth'}",
              '--objective_kwargs={"always_masked": ["middle"]}', "--progress=false"])  # fmt: skip
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--objective_kwargs" in err and "'middle'" in err
    assert "Traceback" not in err


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(UsageError, match="--out is required with --captions"):
        pretrain_encoder("clip_tiny", captions=tmp_path / "c.jsonl")
    with pytest.raises(UsageError, match="COCO captions need --images"):
        pretrain_encoder("clip_tiny", tmp_path / "o.pt", captions=tmp_path / "captions_val2017.json")
    for argv, message in ((["--encoder=sam_tiny"], "'sam_tiny' is not a registered encoder"),
                          ([f"--captions={tmp_path / 'missing.jsonl'}", f"--out={tmp_path / 'o.pth'}"],
                           "caption file not found")):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            main(["pretrain-encoder", *argv, "--progress=false"])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err and "Traceback" not in err


class _Answers(torch.nn.Module):
    """Masked-word logits without a model: the true word (read from the unmasked ids the probe passes),
    or always the first candidate of each list ("red", "circle", "top", "left")."""

    def __init__(self, preprocessor, oracle: bool) -> None:
        super().__init__()
        self.encoder = torch.nn.Module()
        self.encoder.preprocessor = preprocessor
        self.oracle = oracle

    def masked_word_logits(self, batch, masked):
        logits = torch.zeros(*batch.input_ids.shape, 1000)
        if self.oracle:
            return logits.scatter_(2, batch.input_ids[..., None], 1.0)
        tokenize = self.encoder.preprocessor.tokenize
        logits[..., [int(tokenize([w])["input_ids"][0, 1]) for w in ("red", "circle", "top", "left")]] = 1.0
        return logits


def test_the_binding_probes_mask_one_word_and_score_it_among_its_choices():
    from evf.datamodules.captions import ShapesCaptions
    from evf.datamodules.shapes.captions import place
    from evf.datamodules.shapes.expressions import COLOURS
    from evf.tools.pretrain_data import CaptionBatcher, _word_probes

    source, chunk = ShapesCaptions(6, seed=0, split="val"), list(range(6))
    preprocessor = evf.create_encoder("beit3_tiny").preprocessor
    numbers = {}
    for oracle in (True, False):
        answers = _Answers(preprocessor, oracle)
        numbers[oracle] = _word_probes(answers, CaptionBatcher(answers, source, chunk, seed=1), chunk)
    assert numbers[True] == {
        "masked_colour_accuracy": 1.0,
        "masked_colour_in_scene_accuracy": 1.0,
        "masked_shape_accuracy": 1.0,
        "masked_place_accuracy": 1.0,
    }
    scenes = [source.scene(i) for i in chunk]
    objects = [
        (o, image.shape[1], image.shape[0], {p.colour for p in objs}) for image, objs in scenes for o in objs
    ]
    places = [place(o, w, h) for o, w, h, _ in objects]
    said = [r for r, _ in places if r != "middle"] + [c for _, c in places if c != "middle"]
    in_scene = [next(c for c in COLOURS if c in present) for *_, present in objects]  # "red" if present
    hits_in_scene = [o.colour == c for (o, *_), c in zip(objects, in_scene, strict=True)]
    assert numbers[False] == pytest.approx({
        "masked_colour_accuracy": np.mean([o.colour == "red" for o, *_ in objects]),
        "masked_colour_in_scene_accuracy": np.mean(hits_in_scene),
        "masked_shape_accuracy": np.mean([o.shape == "circle" for o, *_ in objects]),
        "masked_place_accuracy": np.mean([w in ("top", "left") for w in said]),
    })  # fmt: skip
