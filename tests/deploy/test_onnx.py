"""``evf export --format onnx``: four graphs per backend family that onnxruntime runs as PyTorch does,
and `evf.deploy.OnnxPredictor` (numpy pre- and post-processing, no torch) against `evf.Predictor`
on text, point, box and mixed prompts."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import evf
from evf.checkpoint import CheckpointError
from evf.deploy import OnnxPredictor, export_onnx
from evf.deploy.numpy_image import resize, transform_image
from evf.preprocessing import ImageSpec
from tests.release_helpers import perturb

FAMILIES = ["sam_tiny", "sam2_tiny", "efficient_sam_tiny"]
IMAGE = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
PROMPTS = [
    "the red circle",
    evf.Prompt(points=((30, 40), (70, 20)), point_labels=(1, 0)),
    evf.Prompt(box=(10, 15, 80, 70)),
    evf.Prompt("the blue square", points=((50, 50),)),
    evf.Prompt("the small triangle on the left", box=(5, 5, 60, 50)),
    evf.Prompt(points=((20, 60),), box=(10, 30, 50, 85)),
]


@pytest.fixture(scope="module", params=FAMILIES)
def exported(request, tmp_path_factory):
    model = perturb(evf.create_model("beit3_tiny", request.param), seed=5).eval()
    out = export_onnx(model, tmp_path_factory.mktemp(request.param), "beit3_tiny", request.param)
    return model, out


@pytest.mark.slow
def test_onnx_predictor_equals_the_predictor_on_every_prompt_kind(exported):
    model, out = exported
    predictor = evf.Predictor(model)
    predictor.set_image(IMAGE)
    onnx = OnnxPredictor(out)
    onnx.set_image(IMAGE)
    theirs, ours = predictor.predict(PROMPTS), onnx.predict(PROMPTS)
    np.testing.assert_allclose(ours.logits, theirs.logits.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours.scores, theirs.scores.numpy(), atol=1e-4, rtol=0)
    decided = np.abs(theirs.logits.numpy()) > 1e-4  # masks agree wherever the logit is not ~0
    assert np.array_equal(ours.masks[decided], theirs.masks.numpy()[decided])
    # The comparison sees the prompts: each prompt gets its own mask.
    assert not np.allclose(ours.logits[0], ours.logits[1], atol=1e-3)


@pytest.mark.slow
def test_a_predictor_without_spinning_sets_it_on_every_graph_and_answers_the_same(exported):
    """`evf serve` builds its ONNX predictors with ``spinning=False``: every session must carry
    it (onnxruntime spins by default), and the masks must not change."""
    _, out = exported
    spinning, quiet = OnnxPredictor(out), OnnxPredictor(out, spinning=False)
    key = "session.intra_op.allow_spinning"
    assert all(s.get_session_options().get_session_config_entry(key) == "0" for s in quiet.sessions.values())
    spinning.set_image(IMAGE)
    quiet.set_image(IMAGE)
    np.testing.assert_array_equal(quiet.predict(PROMPTS[:3]).logits, spinning.predict(PROMPTS[:3]).logits)


@pytest.mark.slow
def test_the_export_describes_its_graphs_with_dynamic_sizes(exported):
    model, out = exported
    manifest = json.loads((out / "deploy.json").read_text())
    assert set(manifest["graphs"]) == {"image_encoder", "prompt_encoder", "geometry", "decoder"}
    assert manifest["feature_keys"] == sorted(model.backend.feature_shapes())
    decoder = {i["name"]: i["shape"] for i in manifest["graphs"]["decoder"]["inputs"]}
    assert decoder["sparse"][:2] == ["prompts", "tokens"] and decoder["image_index"] == ["prompts"]
    text = {i["name"]: i["shape"] for i in manifest["graphs"]["prompt_encoder"]["inputs"]}
    assert text["input_ids"] == ["prompts", "text_length"]
    assert (
        all((out / name).is_file() for name in manifest["tokenizer"]["files"])
        and manifest["tokenizer"]["files"]
    )
    # Two images, five prompts: other sizes than the export traced.
    onnx = OnnxPredictor(out)
    pixels = np.stack([transform_image(manifest["preprocessing"]["backend"], IMAGE)] * 2)
    features = onnx.sessions["image_encoder"].run(None, {"pixels": pixels})
    assert all(f.shape[0] == 2 for f in features)


def test_the_onnx_predictor_loads_no_torch(exported):
    _, out = exported
    code = (
        "import sys, numpy as np\n"
        "from evf.deploy import OnnxPredictor\n"
        f"p = OnnxPredictor({str(out)!r})\n"
        "p.set_image(np.zeros((40, 50, 3), np.uint8))\n"
        "print(p.predict(['a cup']).logits.shape, 'torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split()[-1] == "False" and "(1, 40, 50)" in result.stdout


HALF, IMAGENET, SAM_PIXELS = (
    ((0.5,) * 3, (0.5,) * 3),
    ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    (
        (123.675, 116.28, 103.53),
        (58.395, 57.12, 57.375),
    ),
)
SPECS = [  # every encoder and backend preprocessing the released models and our runs use
    ImageSpec(64, *HALF, interpolation="bicubic", resampler="torch", antialias=False),  # BEIT-3
    ImageSpec(128, *IMAGENET, interpolation="bilinear", resampler="pil"),  # SAM-2 (runs)
    ImageSpec(128, *IMAGENET, resize="longest_side_stretch", interpolation="bilinear", resampler="pil"),
    ImageSpec(
        128,
        *SAM_PIXELS,
        pixel_scale=255.0,
        resize="longest_side_pad",
        interpolation="bilinear",
        resampler="pil",
    ),
    ImageSpec(128, *IMAGENET, interpolation="bilinear", resampler="torch_uint8"),  # EVF-SAM inference.py
]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("shape", [(90, 120, 3), (200, 150, 3)])
def test_numpy_preprocessing_equals_the_image_spec(spec, shape):
    import dataclasses

    image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    np.testing.assert_allclose(
        transform_image(dataclasses.asdict(spec), image), spec(image).numpy(), atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("mode", ["bilinear", "bilinear_numpy", "bicubic"])
def test_numpy_resize_equals_torch_interpolate(mode):
    x = np.random.default_rng(2).standard_normal((2, 3, 17, 23)).astype(np.float32)
    for size in ((40, 31), (8, 9), (17, 23), (480, 640)):
        torch_mode = mode.removesuffix("_numpy")
        expected = torch.nn.functional.interpolate(
            torch.from_numpy(x), size, mode=torch_mode, align_corners=False
        )
        np.testing.assert_allclose(resize(x, size, mode), expected.numpy(), atol=3e-5, rtol=0)


def test_export_refuses_an_existing_export_and_unmerged_adapters(tmp_path):
    (tmp_path / "deploy.json").write_text("{}")
    with pytest.raises(CheckpointError, match="already holds an ONNX export"):
        export_onnx(evf.create_model("beit3_tiny", "sam_tiny"), tmp_path, "beit3_tiny", "sam_tiny")


@pytest.mark.slow
def test_export_cli_writes_onnx_from_a_run_and_from_a_release(tmp_path, capsys):
    import lightning as L

    from evf.cli import main
    from evf.module import EVFSAMModule
    from evf.tools.export import export_release

    module = EVFSAMModule("beit3_tiny", "sam_tiny")
    perturb(module.model, seed=6)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    main(["export", "--format=onnx", f"--ckpt_path={tmp_path / 'run.ckpt'}", f"--output={tmp_path / 'onnx'}"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"evf export: wrote {tmp_path / 'onnx'} (beit3_tiny + sam_tiny, ONNX decoder.onnx")
    export_release(module.model, tmp_path / "release", "beit3_tiny", "sam_tiny")
    main(
        ["export", "--format=onnx", f"--pretrained={tmp_path / 'release'}", f"--output={tmp_path / 'onnx2'}"]
    )
    a, b = OnnxPredictor(tmp_path / "onnx"), OnnxPredictor(tmp_path / "onnx2")
    for p in (a, b):
        p.set_image(IMAGE)
    np.testing.assert_allclose(a.predict(PROMPTS).logits, b.predict(PROMPTS).logits, atol=1e-5, rtol=0)
    with pytest.raises(SystemExit) as exit_:
        main(["export", f"--pretrained={tmp_path / 'release'}", f"--output={tmp_path / 'x'}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "export it with --format onnx" in err and "Traceback" not in err
