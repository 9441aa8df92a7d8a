"""Re-detection and its merge rule, made deterministic: an oracle detector (the clip's true masks,
given to SAM-2 as mask prompts) and a tracker whose occlusion head is biased so that every tracked
frame says "absent" (a track is lost one frame after each prompt) or "present" (never lost)."""

import pytest

from evf.video import predict_video

from .helpers import small_clip, tiny_sam2_model


def oracle(clip):
    return lambda k, image, rows: clip.masks[list(rows), k]


def prompted_frames(report, obj):
    return [r["frame"] for r in report.records if r["object"] == obj and r["prompted"]]


@pytest.mark.slow
def test_redetection_picks_up_the_object_entering_mid_clip(tmp_path):
    clip, frames, annotations = small_clip(tmp_path, num_frames=8)
    model = tiny_sam2_model(present=False)
    args = dict(memory=None, ground_truth=annotations, detector=oracle(clip))
    first_only = predict_video(model, frames, clip.expressions, **args)
    redetect = predict_video(model, frames, clip.expressions, redetect_every=100, **args)

    mover, entering = 0, 2
    # First frame only: every object is prompted once; the entering one was absent then.
    assert all(prompted_frames(first_only, k) == [0] for k in range(3))
    assert all(r["area"] == 0 for r in first_only.records if r["object"] == entering)
    # The mover is lost on frame 1 (vanished) -> re-detected on 2, lost on 3 -> 4, ...
    assert prompted_frames(redetect, mover) == [0, 2, 4, 6]
    # Those re-detections also run the entering object's prompt: it is picked up on the first of
    # them where it is visible, and from then on on every one.
    picked = prompted_frames(redetect, entering)
    expected = [f for f in (2, 4, 6) if clip.masks[entering, f].any()]
    assert picked == [0, *expected] and expected
    first_found = next(r for r in redetect.records if r["object"] == entering and r["frame"] == expected[0])
    assert first_found["area"] > 0.5 * clip.masks[entering, expected[0]].sum()

    j_first = first_only.metrics["per_object"][entering]["J"]
    j_redetect = redetect.metrics["per_object"][entering]["J"]
    assert j_redetect > j_first + 0.2
    assert redetect.metrics["J&F"] > first_only.metrics["J&F"]


@pytest.mark.slow
def test_every_kth_frame_and_live_tracks_are_kept(tmp_path):
    clip, frames, _ = small_clip(tmp_path, num_frames=8)
    # "Absent" tracker and a detector that finds nothing on frame 0: the object is first found on
    # the K-th frame, then lost on each next frame (vanished), re-detected on the one after.

    def empty_start(k, image, rows):
        return clip.masks[list(rows), k] & (k > 0)

    lost = predict_video(
        tiny_sam2_model(present=False), frames, clip.expressions[:1], redetect_every=3, detector=empty_start
    )
    assert prompted_frames(lost, 0) == [0, 3, 5, 7]  # 3: K-th frame; then vanished on 4 -> 5, on 6 -> 7
    # A tracker that always sees the objects: no track is ever lost, so no detection replaces one.
    kept = predict_video(
        tiny_sam2_model(present=True), frames, clip.expressions, redetect_every=2, detector=oracle(clip)
    )
    assert all(prompted_frames(kept, k) == [0] for k in range(2))
