"""Prediction over many images: folders, manifests, failures that do not stop a run, RLE output, one
image-encoder pass per image, and bf16 / fp16 inference on the CPU."""

import json

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

import evf
from evf.cli import main
from evf.inputs import collect_inputs, read_manifest
from evf.module import EVFSAMModule
from evf.prediction import predict_images
from evf.prompts import Prompt
from tests.helpers import segment

PROMPTS = ["the red circle", "the blue square on the left"]
CPU = ["--trainer.accelerator=cpu", "--trainer.logger=false", "--trainer.enable_progress_bar=false"]


def _save_image(path, h=60, w=80, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def folder(tmp_path):
    """Two readable images and one broken file."""
    images = tmp_path / "images"
    images.mkdir()
    _save_image(images / "a.png", seed=1)
    _save_image(images / "b.jpg", 70, 50, seed=2)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return images


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    module = EVFSAMModule("beit3_tiny", "sam_tiny")
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(module)
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_cli_folder_with_a_broken_file_writes_the_rest_and_exits_nonzero(
    tmp_path, folder, checkpoint, capsys
):
    out = tmp_path / "pred"
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", f"--ckpt_path={checkpoint}", "--image", str(folder), "--prompt", PROMPTS[0],
              "--prompt", PROMPTS[1], f"--output={out}", *CPU])  # fmt: skip
    assert exit_info.value.code == 1
    assert "1 image(s) could not be read" in capsys.readouterr().err
    failures = json.loads((out / "failures.json").read_text())
    assert [f["image"] for f in failures] == [str(folder / "broken.png")]
    records = json.loads((out / "predictions.json").read_text())
    assert [(r["image"], r["prompt"]) for r in records] == [
        (str(folder / name), p) for name in ("a.png", "b.jpg") for p in PROMPTS
    ]
    for r in records:
        mask = np.asarray(Image.open(out / r["mask"])) > 0
        rle = {"size": r["rle"]["size"], "counts": r["rle"]["counts"].encode()}
        assert np.array_equal(mask_utils.decode(rle).astype(bool), mask) and r["area"] == mask.sum()
        assert np.asarray(Image.open(out / r["overlay"])).shape == (*mask.shape, 3)


def test_cli_manifest_gives_each_image_its_prompts(tmp_path, folder, checkpoint):
    manifest = tmp_path / "prompts.csv"
    manifest.write_text(
        "image,prompt\nimages/a.png,the red circle\nimages/b.jpg,the dog\nimages/a.png,a square\n"
    )
    out = tmp_path / "pred"
    main(["predict", f"--ckpt_path={checkpoint}", f"--manifest={manifest}", f"--output={out}",
          "--batch_size=2", *CPU])  # fmt: skip
    records = json.loads((out / "predictions.json").read_text())
    assert [(r["image"].rsplit("/", 1)[1], r["prompt"]) for r in records] == [
        ("a.png", "the red circle"), ("a.png", "a square"), ("b.jpg", "the dog"),
    ]  # fmt: skip
    assert not (out / "failures.json").exists()


def test_manifests_in_json_and_csv(tmp_path, folder):
    (tmp_path / "m.json").write_text(json.dumps({"images/a.png": ["x", "y"], "images": "z"}))
    items = read_manifest(tmp_path / "m.json")
    assert [(i.path.name, tuple(p.text for p in i.prompts)) for i in items] == [
        ("a.png", ("x", "y")), ("a.png", ("z",)), ("b.jpg", ("z",)), ("broken.png", ("z",)),
    ]  # fmt: skip
    (tmp_path / "l.json").write_text(json.dumps([{"image": "images/b.jpg", "prompt": "one"}]))
    assert [(i.path, i.prompts) for i in read_manifest(tmp_path / "l.json")] == [
        (folder / "b.jpg", (Prompt("one"),))
    ]
    (tmp_path / "bad.json").write_text(json.dumps([{"image": "images/b.jpg"}]))
    with pytest.raises(ValueError, match="entry 0 needs"):
        read_manifest(tmp_path / "bad.json")
    (tmp_path / "bad.csv").write_text("path,text\na.png,x\n")
    with pytest.raises(ValueError, match="header"):
        read_manifest(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="no prompts"):
        collect_inputs([folder / "a.png"], [])


def test_python_api_reports_a_missing_image_and_runs_the_image_encoder_once_per_image(tmp_path, folder):
    model = evf.create_model("beit3_tiny", "sam_tiny").eval()
    seen = []
    model.backend.image_encoder.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    images = [folder / "a.png", tmp_path / "missing.png", folder / "b.jpg"]
    report = evf.predict_images(model, images, PROMPTS, output=tmp_path / "out", batch_size=2, progress=False)
    assert [f["image"] for f in report.failures] == [str(tmp_path / "missing.png")]
    assert "not found" in report.failures[0]["error"]
    assert sum(seen) == 2 and len(report.records) == 4  # 2 images read, 2 prompts each
    a = np.asarray(Image.open(folder / "a.png").convert("RGB"))
    expected = segment(model, a, PROMPTS)
    for record, mask in zip(report.records[:2], expected.masks, strict=True):
        rle = {"size": record["rle"]["size"], "counts": record["rle"]["counts"].encode()}
        assert np.array_equal(mask_utils.decode(rle).astype(bool), mask.numpy())
    assert json.loads((tmp_path / "out" / "predictions.json").read_text()) == report.records


def test_repeated_stems_get_distinct_files(tmp_path):
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        _save_image(tmp_path / sub / "img.png")
    model = evf.create_model("beit3_tiny", "sam_tiny").eval()
    report = predict_images(
        model, [tmp_path / "x", tmp_path / "y"], "a cat", output=tmp_path / "out", progress=False
    )
    assert [r["mask"] for r in report.records] == ["img_0_mask.png", "img_1_0_mask.png"]


@pytest.mark.parametrize("backend", ["sam_tiny", "sam2_tiny", "efficient_sam_tiny"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_autocast_on_cpu_mostly_agrees_with_fp32(backend, dtype):
    model = evf.create_model("beit3_tiny", backend).eval()
    image = np.random.default_rng(3).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    fp32 = segment(model, image, PROMPTS)
    low = segment(model, image, PROMPTS, dtype=dtype)
    assert low.logits.dtype == torch.float32
    assert (low.masks == fp32.masks).float().mean() > 0.98


def test_bf16_weights_run_for_efficient_sam_but_not_for_the_upstream_sam_position_encoding():
    """``model.to(torch.bfloat16)``: EfficientSAM runs; segment_anything's and sam2's random-Fourier
    position encoding multiplies an fp32 grid with the bf16 buffer and fails (use ``dtype=``)."""
    image = np.random.default_rng(4).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    model = evf.create_model("beit3_tiny", "efficient_sam_tiny").eval()
    fp32 = segment(model, image, PROMPTS)
    bf16 = segment(model.to(torch.bfloat16), image, PROMPTS)
    assert (bf16.masks == fp32.masks).float().mean() > 0.98
    with pytest.raises(RuntimeError, match="same dtype"):
        segment(evf.create_model("beit3_tiny", "sam_tiny").eval().to(torch.bfloat16), image, PROMPTS)


def test_manifest_prompts_with_points_and_boxes_in_json_and_csv(tmp_path, folder):
    (tmp_path / "m.json").write_text(json.dumps({"images/a.png": [
        {"text": "the cat", "box": [1, 2, 30, 40]},
        {"points": [[5, 6], [7, 8]], "point_labels": [1, 0]},
    ]}))  # fmt: skip
    (item,) = read_manifest(tmp_path / "m.json")
    assert item.prompts == (
        Prompt("the cat", box=(1.0, 2.0, 30.0, 40.0)),
        Prompt(None, points=((5.0, 6.0), (7.0, 8.0)), point_labels=(1, 0)),
    )
    (tmp_path / "m.csv").write_text(
        "image,prompt,points,box\nimages/a.png,the cat,,1 2 30 40\nimages/a.png,,5 6; 7 8 0,\n"
    )
    assert read_manifest(tmp_path / "m.csv")[0].prompts == item.prompts
    (tmp_path / "bad.csv").write_text("image,prompt,box\nimages/a.png,x,30 2 1 40\n")
    with pytest.raises(ValueError, match=r"bad.csv, line 2: a box is x0, y0, x1, y1"):
        read_manifest(tmp_path / "bad.csv")
    (tmp_path / "bad.json").write_text(json.dumps({"images/a.png": [{"text": "x", "point": [[1, 2]]}]}))
    with pytest.raises(ValueError, match=r"images/a.png: unknown key\(s\) \['point'\]"):
        read_manifest(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="1 point\\(s\\) but 2 label"):
        Prompt(points=((1, 2),), point_labels=(1, 0))


def test_mixed_prompts_equal_their_separate_predictions_with_one_image_encoder_pass():
    model = evf.create_model("beit3_tiny", "sam_tiny").eval()
    image = np.random.default_rng(5).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    prompts = [
        Prompt(points=((10, 20), (40, 30)), point_labels=(1, 0)),
        Prompt("the red circle"),
        Prompt("the square", box=(5, 5, 50, 40)),
        Prompt(box=(20, 10, 80, 55)),
    ]
    passes = []
    model.backend.image_encoder.register_forward_hook(lambda m, args, out: passes.append(1))
    mixed = segment(model, image, prompts)
    assert evf.Prompt is Prompt
    assert len(passes) == 1
    alone = [
        segment(model, image, None, points=[np.array([[10, 20], [40, 30]])], point_labels=[np.array([1, 0])]),
        segment(model, image, ["the red circle"]),
        segment(model, image, ["the square"], boxes=np.array([[5, 5, 50, 40]])),
        segment(model, image, None, boxes=np.array([[20, 10, 80, 55]])),
    ]
    for k, single in enumerate(alone):
        torch.testing.assert_close(mixed.logits[k], single.logits[0], msg=f"prompt {k}")
        torch.testing.assert_close(mixed.scores[k], single.scores[0])


def test_cli_points_and_box_join_the_text_or_stand_alone(tmp_path, folder, checkpoint):
    image = folder / "a.png"
    out = tmp_path / "pred"
    main(["predict", f"--ckpt_path={checkpoint}", "--image", str(image), "--prompt", PROMPTS[0],
          "--box", "4,5,60,50", f"--output={out}/text_box", *CPU])  # fmt: skip
    main(["predict", f"--ckpt_path={checkpoint}", "--image", str(image), "--point", "30,20",
          "--point", "70,50,0", f"--output={out}/points", *CPU])  # fmt: skip
    (with_box,) = json.loads((out / "text_box/predictions.json").read_text())
    (points,) = json.loads((out / "points/predictions.json").read_text())
    assert with_box["prompt"] == PROMPTS[0] and with_box["box"] == [4.0, 5.0, 60.0, 50.0]
    assert points["prompt"] is None and points["points"] == [[30.0, 20.0], [70.0, 50.0]]
    assert points["point_labels"] == [1, 0]

    model = EVFSAMModule.load_from_checkpoint(checkpoint).model.eval()
    rgb = np.asarray(Image.open(image).convert("RGB"))
    expected = {
        "text_box": segment(model, rgb, [PROMPTS[0]], boxes=np.array([[4, 5, 60, 50]])).masks[0],
        "points": segment(
            model, rgb, None, points=[np.array([[30, 20], [70, 50]])], point_labels=[np.array([1, 0])]
        ).masks[0],
    }
    for name, record in (("text_box", with_box), ("points", points)):
        written = np.asarray(Image.open(out / name / record["mask"])) > 0
        assert np.array_equal(written, expected[name].numpy()), name


def test_a_batch_with_boxes_encodes_its_images_once_and_matches_per_image_prediction(tmp_path, folder):
    model = evf.create_model("beit3_tiny", "sam_tiny").eval()
    (tmp_path / "m.json").write_text(json.dumps({
        "images/a.png": [{"text": "the cat", "box": [1, 2, 30, 40]}, "the dog"],
        "images/b.jpg": [{"points": [[5, 6]]}],
    }))  # fmt: skip
    calls = []
    model.backend.image_encoder.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    report = predict_images(model, manifest=tmp_path / "m.json", batch_size=2, progress=False)
    assert calls == [2]  # one image-encoder call for the batch of two images
    for name, records in (("a.png", report.records[:2]), ("b.jpg", report.records[2:])):
        (item,) = [i for i in read_manifest(tmp_path / "m.json") if i.path.name == name]
        rgb = np.asarray(Image.open(item.path).convert("RGB"))
        expected = segment(model, rgb, item.prompts)
        for record, mask in zip(records, expected.masks, strict=True):
            rle = {"size": record["rle"]["size"], "counts": record["rle"]["counts"].encode()}
            assert np.array_equal(mask_utils.decode(rle).astype(bool), mask.numpy()), record
