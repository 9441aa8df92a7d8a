"""`evf describe`: the per-part parameter table of a config's model, built on the meta device."""

from pathlib import Path

import torch

import evf
from evf.cli import main
from evf.model import trainable_summary

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "configs/evf_sam_h_beit3_l.yaml"


def _row(out: str, label: str) -> list[int]:
    line = next(line for line in out.splitlines() if line.startswith(label))
    return [int(cell.replace(",", "")) for cell in line[len(label) :].split()[:3]]


def test_describe_prints_the_parts_of_the_paper_model(capsys):
    main(["describe", str(BASE)])
    out = capsys.readouterr().out
    with torch.device("meta"):
        expected = trainable_summary(evf.create_model("beit3_large", "sam_vit_h"))
    assert "encoder: beit3_large" in out and "backend: sam_vit_h" in out
    encoder = expected["encoder"]["trainable"]
    assert _row(out, "multimodal encoder") == [encoder, 0, encoder]
    frozen = expected["image_encoder"]["frozen"]
    assert _row(out, "SAM image encoder") == [0, frozen, frozen]
    total = sum(c["trainable"] + c["frozen"] for c in expected.values())
    assert _row(out, "total")[2] == total and "1.30B" in out


def test_experiment_config_merges_over_the_base(tmp_path, capsys):
    experiment = tmp_path / "clip_text_frozen.yaml"
    experiment.write_text(
        "model:\n  encoder: clip_vit_l14_openai\n  tokenizer: null\n  encoder_kwargs: {fusion: text}\n"
        "  trainable: {encoder: false}\n"
    )
    main(["describe", str(BASE), "--experiment", str(experiment)])
    out = capsys.readouterr().out
    assert "encoder: clip_vit_l14_openai (fusion=text)" in out
    assert _row(out, "multimodal encoder") == [0, 123_650_304, 123_650_304]  # open_clip's ViT-L/14 text tower
    assert _row(out, "projector")[0] == (768 * 768 + 768) + (768 * 256 + 256)  # Linear(768,768), (768,256)
    assert _row(out, "SAM image encoder")[1] == 637_026_048  # the base's frozen SAM ViT-H stays
