"""The moving-shapes clip: objects move, one enters mid-clip, one is hidden behind a wall."""

import numpy as np

from evf.datamodules.shapes import generate_clip, write_clip
from evf.io import read_label, read_rgb


def test_clip_events_and_ground_truth():
    clip = generate_clip(seed=3, num_frames=16)
    visible = clip.masks.any(axis=(2, 3))  # [3,T]
    assert visible[0].all()  # the mover is always in view, and moves
    assert not np.array_equal(clip.masks[0, 0], clip.masks[0, -1])
    assert clip.hidden_frames and not visible[1, list(clip.hidden_frames)].any()
    assert visible[1, 0] and visible[1, -1]  # hidden in the middle only
    assert (
        clip.enter_frame >= 8
        and not visible[2, : clip.enter_frame].any()
        and visible[2, clip.enter_frame :].all()
    )
    assert clip.masks.sum(axis=0).max() == 1  # visible pixels never overlap
    assert len(set(clip.expressions)) == 3
    again = generate_clip(seed=3, num_frames=16)
    assert np.array_equal(again.frames, clip.frames) and again.expressions == clip.expressions
    assert generate_clip(seed=4, num_frames=16).expressions != clip.expressions or not np.array_equal(
        generate_clip(seed=4, num_frames=16).frames, clip.frames
    )


def test_write_clip_as_jpeg_frames_and_davis_annotations(tmp_path):
    clip = generate_clip(seed=0, num_frames=8, size=(96, 128))
    frames, annotations = write_clip(clip, tmp_path)
    assert sorted(p.name for p in frames.iterdir())[:2] == ["00000.jpg", "00001.jpg"]
    labels = read_label(annotations / "00007.png")
    for k in range(3):
        assert np.array_equal(labels == k + 1, clip.masks[k, 7])
    assert np.abs(read_rgb(frames / "00007.jpg").astype(int) - clip.frames[7]).mean() < 3
