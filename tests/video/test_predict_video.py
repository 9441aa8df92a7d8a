"""`evf.predict_video`: the files it writes, several objects, lazily read clips and bad input."""

import json

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

import evf
from evf.video import VideoError, predict_video
from evf.video.frames import VideoFrames

from .helpers import small_clip, tiny_sam2_model


@pytest.mark.slow
def test_outputs_for_several_objects(tmp_path):
    clip, frames, annotations = small_clip(tmp_path, num_frames=8)
    out = tmp_path / "out"
    report = predict_video(tiny_sam2_model(), frames, clip.expressions, out, ground_truth=annotations)

    assert report.frames == 8 and report.failures == []
    lines = [json.loads(line) for line in (out / "masks.jsonl").read_text().splitlines()]
    assert len(lines) == 8 * 3
    assert [(r["frame"], r["object"]) for r in lines] == [(f, k) for f in range(8) for k in range(3)]
    assert {r["prompt"] for r in lines} == set(clip.expressions)
    assert all(r["prompted"] == (r["frame"] == 0) for r in lines)
    assert all(0.0 <= r["score"] <= 1.0 for r in lines)
    for r in lines:  # the PNG and the RLE hold the same mask
        png = np.asarray(Image.open(out / "masks" / f"{r['frame']:05d}_{r['object']}.png")) > 0
        rle = {"size": r["rle"]["size"], "counts": r["rle"]["counts"].encode()}
        assert np.array_equal(mask_utils.decode(rle).astype(bool), png)
        assert r["area"] == png.sum()
    # Each expression is its own object: different prompt tokens, different masks.
    first = [np.asarray(Image.open(out / "masks" / f"00000_{k}.png")) for k in range(3)]
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[1], first[2])

    video = cv2.VideoCapture(str(out / "overlay.mp4"))
    count = 0
    while (frame := video.read())[0]:
        count += 1
        assert frame[1].shape[1] == 128 and frame[1].shape[0] > 96  # the frame plus its captions
    assert count == 8

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["frames"] == 8 and len(metrics["per_object"]) == 3
    assert metrics["J&F"] == pytest.approx((metrics["J"] + metrics["F"]) / 2)
    assert [o["prompt"] for o in metrics["per_object"]] == list(clip.expressions)


@pytest.mark.slow
def test_unreadable_and_odd_sized_frames_are_reported_and_skipped(tmp_path):
    clip, frames, _ = small_clip(tmp_path, num_frames=8)
    (frames / "00003.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(clip.frames[5][:64]).save(frames / "00005.jpg")
    out = tmp_path / "out"
    report = predict_video(tiny_sam2_model(), frames, clip.expressions[:1], out)

    assert [(f["frame"], f["name"]) for f in report.failures] == [(3, "00003.jpg"), (5, "00005.jpg")]
    assert "cannot read image" in report.failures[0]["error"] and "is 128x64" in report.failures[1]["error"]
    assert [r["frame"] for r in report.records] == [0, 1, 2, 4, 6, 7]
    assert json.loads((out / "failures.json").read_text()) == report.failures


def test_a_video_file_is_read_lazily_in_order(tmp_path):
    clip, _, _ = small_clip(tmp_path, num_frames=8)
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 10.0, (128, 96))
    for frame in clip.frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    frames = VideoFrames(path)
    assert (len(frames), frames.size, frames.fps, frames.names[2]) == (8, (96, 128), 10.0, "00002")
    decoded = [frames.read(k) for k in (0, 1, 5, 2)]  # forward, skip ahead, then back (reopens)
    for k, image in zip((0, 1, 5, 2), decoded, strict=True):
        assert np.abs(image.astype(int) - clip.frames[k]).mean() < 8  # mp4v is lossy
    assert not np.array_equal(decoded[1], decoded[2])


def test_frames_of_a_folder_sort_numerically(tmp_path):
    for i in (10, 2, 1):
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(tmp_path / f"{i}.png")
    frames = VideoFrames(tmp_path)
    assert frames.names == ["1.png", "2.png", "10.png"]
    assert frames.read(2)[0, 0, 0] == 10


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "video not found"),
        ("empty", "no frame images"),
        ("unreadable", "no readable frame"),
        ("not_a_video", "cannot open video"),
    ],
)
def test_bad_clips_raise_naming_the_path(tmp_path, case, message):
    path = tmp_path / case
    if case == "empty":
        path.mkdir()
    elif case == "unreadable":
        path.mkdir()
        (path / "00000.jpg").write_bytes(b"broken")
    elif case == "not_a_video":
        path.write_bytes(b"not a video")
    with pytest.raises(VideoError, match=message) as err:
        VideoFrames(path)
    assert case in str(err.value)


def test_bad_arguments_raise(tmp_path):
    clip, frames, _ = small_clip(tmp_path, num_frames=8)
    with pytest.raises(VideoError, match="SAM-2 backend"):
        predict_video(evf.create_model("beit3_tiny", "sam_tiny"), frames, ["the red circle"])
    with pytest.raises(VideoError, match="at least one non-empty prompt"):
        predict_video(tiny_sam2_model(), frames, [" "])
    with pytest.raises(VideoError, match="ground truth folder not found"):
        predict_video(tiny_sam2_model(), frames, ["the red circle"], ground_truth=tmp_path / "nope")
