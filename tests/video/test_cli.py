"""``evf predict-video`` on the command line: --pretrained / --ckpt_path, repeated --prompt, exit codes."""

import json

import lightning as L
import pytest
from safetensors.torch import load_file, save_file

from evf.cli import main
from evf.module import EVFSAMModule
from evf.tools.export import export_release
from evf.video import predict_video
from evf.video.tracker import backend_state, build_video_predictor

from .helpers import small_clip, tiny_sam2_model


@pytest.mark.slow
def test_pretrained_release_with_its_memory_modules(tmp_path, capsys):
    clip, frames, _ = small_clip(tmp_path, num_frames=8)
    model = tiny_sam2_model()
    release = tmp_path / "release"
    export_release(model, release, "beit3_tiny", "sam2_tiny")
    full = build_video_predictor(model, seed=7).state_dict()  # memory modules another seed would not give
    tensors = load_file(release / "model.safetensors")
    ours = backend_state(model.backend)
    tensors.update({"visual_model." + k: v for k, v in full.items() if k not in ours})
    save_file(tensors, release / "model.safetensors")

    out = tmp_path / "out"
    args = ["--pretrained", str(release), "--video", str(frames), "--output", str(out)]
    prompts = ["--prompt", clip.expressions[0], "--prompt", clip.expressions[2]]
    main(["predict-video", *args, *prompts])
    assert "8 frame(s), 2 object(s)" in capsys.readouterr().out
    lines = [json.loads(line) for line in (out / "masks.jsonl").read_text().splitlines()]
    assert {r["prompt"] for r in lines} == {clip.expressions[0], clip.expressions[2]}

    # The same as from Python with the release's memory (preprocessing of load_pretrained: as the CLI's).
    import evf

    expected = predict_video(
        evf.load_pretrained(release), frames, [clip.expressions[0], clip.expressions[2]], memory=release
    )
    assert [r["rle"] for r in lines] == [r["rle"] for r in expected.records]
    random_memory = predict_video(
        evf.load_pretrained(release), frames, [clip.expressions[0], clip.expressions[2]]
    )
    assert [r["rle"] for r in lines] != [r["rle"] for r in random_memory.records]


@pytest.mark.slow
def test_ckpt_path_with_an_unreadable_frame_exits_1(tmp_path, capsys):
    clip, frames, _ = small_clip(tmp_path, num_frames=8)
    (frames / "00002.jpg").write_bytes(b"broken")
    module = EVFSAMModule("beit3_tiny", "sam2_tiny")
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    out = tmp_path / "out"
    args = ["--ckpt_path", str(tmp_path / "run.ckpt"), "--video", str(frames), "--output", str(out)]
    with pytest.raises(SystemExit) as exit_:
        main(["predict-video", *args, "--prompt", "the red circle", "--redetect-every", "3"])
    assert exit_.value.code == 1
    assert "frame 2 (00002.jpg)" in capsys.readouterr().err
    assert len((out / "masks.jsonl").read_text().splitlines()) == 7


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--video", "{tmp}/missing", "--pretrained", "{release}"], "video not found: {tmp}/missing"),
        (["--video", "{frames}", "--pretrained", "{sam_release}"], "needs a SAM-2 backend"),
        (["--video", "{frames}"], "exactly one of --ckpt_path"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, message):
    _, frames, _ = small_clip(tmp_path, num_frames=8)
    import evf

    export_release(tiny_sam2_model(), tmp_path / "release", "beit3_tiny", "sam2_tiny")
    export_release(evf.create_model("beit3_tiny", "sam_tiny"), tmp_path / "sam", "beit3_tiny", "sam_tiny")
    paths = {
        "tmp": tmp_path,
        "frames": frames,
        "release": tmp_path / "release",
        "sam_release": tmp_path / "sam",
    }
    argv = [a.format(**paths) for a in args]
    with pytest.raises(SystemExit) as exit_:
        main(["predict-video", *argv, "--prompt", "the red circle", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("evf: error: ") and message.format(**paths) in err and "Traceback" not in err


def test_tool_options_take_hyphens_and_lists_repeat():
    from evf.cli import tool_arguments
    from evf.tools.predict_video import predict_video as tool

    argv = [
        "--prompt",
        "a b",
        "--prompt=c",
        "--redetect-every",
        "3",
        "--ground-truth=x",
        "--other-thing",
        "y",
    ]
    assert tool_arguments(tool, argv) == [
        "--prompt+", "a b", "--prompt+=c", "--redetect_every", "3", "--ground_truth=x", "--other-thing", "y",
    ]  # fmt: skip
