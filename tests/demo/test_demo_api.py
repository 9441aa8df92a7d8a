"""``evf demo`` through ``gradio_client`` against the app served on 127.0.0.1: the page's masks are
`evf.Predictor`'s, the image is encoded once per upload, bad input gets a message and the server
goes on; and the command line."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from pycocotools import mask as mask_utils
from segment_anything.modeling import ImageEncoderViT

import evf
from evf.assets import SAM_TINY_SHAPES
from evf.cli import main
from evf.demo.cli import load_model
from evf.demo.drawing import legend_html, masks_overlay
from evf.demo.session import DemoSession
from evf.io import read_rgb
from evf.module import EVFSAMModule
from evf.tools.export import export_release
from tests.demo.conftest import free_port
from tests.helpers import segment

TIMEOUT = 120  # s per request: generous for 2 shared CPU cores, finite so a hung server fails the test


def call(client: Client, *args, api_name: str):
    return client.submit(*args, api_name=api_name).result(timeout=TIMEOUT)


@pytest.fixture
def client(served, tmp_path):
    return Client(served, verbose=False, download_files=str(tmp_path))


def _served_masks(files: list[str]) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """predictions.json's records, its RLE masks decoded, and the mask PNGs read back."""
    records = json.loads(Path(files[0]).read_text())
    rle = np.stack([mask_utils.decode(r["rle"]) for r in records]).astype(bool)
    png = np.stack([np.asarray(Image.open(f)) > 0 for f in files[1:]])
    return records, rle, png


def test_served_masks_equal_the_predictor_for_text_points_and_boxes(served, client, demo_model, scene):
    predictor = evf.Predictor(demo_model)
    predictor.set_image(read_rgb(scene.path))
    requests = [
        (scene.texts, False, "", "", [evf.Prompt(t) for t in scene.texts]),
        (["the triangle"], True, "120,250,1\n60,30,0", "60,220,200,330",
         [evf.Prompt("[semantic] the triangle", points=((120, 250), (60, 30)), point_labels=(1, 0),
                     box=(60, 220, 200, 330))]),
        ([], False, "", "80,230,190,320", [evf.Prompt(box=(80, 230, 190, 320))]),
    ]  # fmt: skip
    for texts, semantic, points, box, prompts in requests:
        overlay, legend, status, files, _ = call(
            client, handle_file(scene.path), "\n".join(texts), semantic, points, box, api_name="/segment"
        )
        expected = predictor.predict(prompts)
        records, rle, png = _served_masks(files)
        assert np.array_equal(rle, expected.masks.numpy()) and np.array_equal(png, rle)
        assert [r["prompt"] for r in records] == [p.text for p in prompts]
        np.testing.assert_allclose([r["score"] for r in records], expected.scores.numpy(), rtol=1e-6)
        assert [r.get("box") for r in records] == [list(p.box) if p.box else None for p in prompts]
        assert legend.count('class="evf-mask"') == len(prompts) and "decode" in status
    # The last request is a box alone on the shapes-pretrained SAM: a real mask of the triangle.
    triangle = scene.masks[scene.texts.index("the triangle")]
    assert (rle[0] & triangle).sum() / (rle[0] | triangle).sum() > 0.5
    shown = np.asarray(Image.open(overlay).convert("RGB"))
    assert shown.shape == scene.image.shape
    filled = (shown == masks_overlay(scene.image, rle)).all(-1)  # the box outline is drawn on top
    assert filled[rle[0]].mean() > 0.9 and (shown != scene.image).any(-1)[rle[0]].mean() > 0.9


def test_the_image_is_encoded_once_per_upload(client, scene, tmp_path, monkeypatch):
    calls: list[int] = []
    forward = ImageEncoderViT.forward
    monkeypatch.setattr(ImageEncoderViT, "forward", lambda self, x: calls.append(len(x)) or forward(self, x))
    status = call(client, handle_file(scene.path), api_name="/encode")[6]
    assert calls == [1] and "encode" in status
    for text in ("the triangle", "the shape at the top\nthe square on the right"):
        status = call(client, handle_file(scene.path), text, False, "", "", api_name="/segment")[2]
        assert "at upload, reused" in status
    assert calls == [1]
    other = tmp_path / "other.png"
    Image.fromarray(scene.image[::2, ::2].copy()).save(other)
    status = call(client, handle_file(other), "the triangle", False, "", "", api_name="/segment")[2]
    assert calls == [1, 1] and "in this request" in status


def test_sessions_keep_their_own_images(served, demo_model, scene, tmp_path):
    first, second = (Client(served, verbose=False, download_files=str(tmp_path / n)) for n in "ab")
    flipped = tmp_path / "flipped.png"
    Image.fromarray(scene.image[:, ::-1].copy()).save(flipped)
    call(first, handle_file(scene.path), api_name="/encode")
    call(second, handle_file(flipped), api_name="/encode")
    files = call(first, handle_file(scene.path), "the triangle", False, "", "", api_name="/segment")[3]
    expected = segment(demo_model, scene.image, ["the triangle"])
    assert np.array_equal(_served_masks(files)[1], expected.masks.numpy())


@pytest.mark.parametrize(
    ("expressions", "points", "box", "message"),
    [
        ("", "", "", "nothing to segment"),
        ("  \n \n", "", "", "nothing to segment"),
        ("x" * 2000, "", "", "expression 1 is 2,000 characters long"),
        ("the triangle", "", "10,10,900,900", "box 10,10,900,900 is not inside the 339x348 image"),
        ("", "400,20", "", "point 400,20 is outside the 339x348 image"),
        ("the triangle", "12,abc", "", "a point is 'x,y' or 'x,y,label' (numbers), got '12,abc'"),
        ("the triangle", "", "1,2,3", "a box is 'x0,y0,x1,y1' (numbers), got '1,2,3'"),
        ("the triangle", "", "50,50,10,10", "x0 <= x1"),
        ("\n".join(["a"] * 17), "", "", "at most 16"),
    ],
)
def test_bad_prompts_get_a_message_and_the_server_goes_on(client, scene, expressions, points, box, message):
    with pytest.raises(AppError) as err:
        call(client, handle_file(scene.path), expressions, False, points, box, api_name="/segment")
    assert message in str(err.value) and "Traceback" not in str(err.value)
    files = call(client, handle_file(scene.path), "the triangle", False, "", "", api_name="/segment")[3]
    assert len(files) == 2  # the next request is answered


def test_a_file_that_is_not_an_image_gets_a_message_and_the_server_goes_on(client, scene, tmp_path):
    fake = tmp_path / "holiday.png"
    fake.write_text("not an image")
    outputs = call(client, handle_file(fake), api_name="/encode")
    assert outputs[0] is None and "cannot read holiday.png as an image" in outputs[6]  # upload cleared
    assert str(tmp_path) not in outputs[6]  # no server paths in the page
    with pytest.raises(AppError, match="cannot read holiday.png as an image"):
        call(client, handle_file(fake), "the triangle", False, "", "", api_name="/segment")
    with pytest.raises(AppError, match="upload an image first"):
        call(client, None, "the triangle", False, "", "", api_name="/segment")
    files = call(client, handle_file(scene.path), "the triangle", False, "", "", api_name="/segment")[3]
    assert Path(files[0]).name == "predictions.json"


# ---- the command line -------------------------------------------------------------------------------


def _run_checkpoint(tmp_path, **kwargs) -> tuple[Path, EVFSAMModule]:
    module = EVFSAMModule("beit3_tiny", "sam_tiny", **kwargs)
    torch.nn.init.normal_(module.model.projector[0].weight, std=0.5)  # not the init a rebuild would draw
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    return tmp_path / "run.ckpt", module


def test_load_model_reads_a_run_checkpoint_and_a_release(tmp_path, scene):
    ckpt, module = _run_checkpoint(tmp_path)
    expected = segment(module.model.eval(), scene.image, ["the triangle"]).logits
    model, title = load_model(ckpt_path=ckpt)
    assert torch.equal(segment(model, scene.image, ["the triangle"]).logits, expected)
    assert "run.ckpt" in title and "beit3_tiny + sam_tiny" in title
    export_release(module.model, tmp_path / "release", "beit3_tiny", "sam_tiny")
    model, title = load_model(pretrained=tmp_path / "release")
    assert torch.equal(segment(model, scene.image, ["the triangle"]).logits, expected)
    assert "release" in title


def test_a_run_trained_from_an_embedding_cache_needs_its_sam_weights(tmp_path, scene, capsys):
    ckpt, module = _run_checkpoint(
        tmp_path, backend_checkpoint=str(SAM_TINY_SHAPES), use_embedding_cache=True
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--ckpt_path", str(ckpt)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "holds no SAM image encoder: pass --backend_checkpoint" in err
    model, _ = load_model(ckpt_path=ckpt, backend_checkpoint=SAM_TINY_SHAPES)
    live = evf.create_model("beit3_tiny", "sam_tiny", backend_kwargs={"checkpoint": SAM_TINY_SHAPES})
    missing, unexpected = live.load_state_dict(module.model.state_dict(), strict=False)
    assert missing and all(".image_encoder." in k for k in missing) and not unexpected  # only SAM's encoder
    expected = segment(live.eval(), scene.image, ["the triangle"]).logits
    assert torch.equal(segment(model, scene.image, ["the triangle"]).logits, expected)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give either --ckpt_path RUN.ckpt or --pretrained DIR"),
        (["--ckpt_path", "a.ckpt", "--pretrained", "dir"], "give either --ckpt_path"),
        (["--ckpt_path", "missing.ckpt"], "--ckpt_path missing.ckpt: no such file"),
        (["--pretrained", "missing"], "--pretrained missing: no such directory"),
    ],
)
def test_demo_command_errors_are_one_line(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"evf: error: {message}" in err and "Traceback" not in err


@pytest.mark.slow
def test_demo_command_serves_a_release_on_the_given_port(tmp_path, scene):
    model = evf.create_model("beit3_tiny", "sam_tiny").eval()
    export_release(model, tmp_path / "release", "beit3_tiny", "sam_tiny")
    port = free_port()
    command = [sys.executable, "-m", "evf.cli", "demo", "--pretrained", str(tmp_path / "release")]
    server = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    try:
        client = _connect(f"http://127.0.0.1:{port}/", server, tmp_path)
        files = call(client, handle_file(scene.path), "the triangle", False, "", "", api_name="/segment")[3]
        loaded = evf.load_pretrained(tmp_path / "release")
        expected = segment(loaded, read_rgb(scene.path), ["the triangle"]).masks.numpy()
        assert np.array_equal(_served_masks(files)[1], expected)
    finally:
        server.terminate()
        server.wait(timeout=30)


def _connect(url: str, server: subprocess.Popen, tmp_path: Path, wait: float = 120) -> Client:
    deadline = time.monotonic() + wait
    while True:
        if server.poll() is not None:
            raise AssertionError(
                f"evf demo exited with {server.returncode}:\n{server.stdout.read().decode()}"
            )
        try:
            return Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_the_legend_shows_a_models_presence_or_one(demo_model, scene):
    session = DemoSession(demo_model)
    session.load(scene.path)
    prompts = session.prompts("the triangle\nthe shape at the top", False, "", "")
    assert "<td>1.000</td>" in legend_html(session.segment(prompts))  # no presence head: read as 1.0
    with_head = evf.create_model("beit3_tiny", "sam_tiny", presence=True).eval()
    with torch.no_grad():  # presence sigmoid(-ln 3) = 0.25 for every expression
        with_head.presence_head[2].weight.zero_()
        with_head.presence_head[2].bias.fill_(-math.log(3.0))
    session = DemoSession(with_head)
    session.load(scene.path)
    result = session.segment(prompts)
    assert result.presence == pytest.approx([0.25, 0.25])
    assert "<td>0.250</td>" in legend_html(result)
    assert not result.prediction.masks.any()  # below the 0.5 threshold: "it isn't there"
