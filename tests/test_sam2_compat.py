"""sam2's internals that video uses are in the installed sam2 (a changed one is named with sam2's
version), and sam2's hole filling without its CUDA extension: the documented rule (8-connectivity, area
threshold, fill score 0.1) on hand-made masks, through sam2's own ``fill_holes_in_mask_scores``."""

import warnings

import pytest
import torch

from evf.sam2_compat import (
    INFERENCE_STATE_KEYS,
    connected_components,
    has_cuda_extension,
    internals_problems,
    new_inference_state,
    sam2_version,
    use_cpu_connected_components,
)


def _masks(*rows: str) -> torch.Tensor:
    """Rows of ``#`` (1) and ``.`` (0) -> ``[1,1,H,W]``."""
    return torch.tensor([[c == "#" for c in row] for row in rows], dtype=torch.uint8)[None, None]


def test_components_are_eight_connected_with_their_areas():
    mask = _masks(
        "##...",
        "..#..",  # touches the top pair at a corner: one component of 3
        ".....",
        "...##",
        "...##",
    )
    labels, counts = connected_components(torch.cat([mask, 1 - mask]))
    assert labels.dtype == counts.dtype == torch.int32 and labels.shape == (2, 1, 5, 5)
    first = labels[0, 0]
    assert first[0, 0] == first[0, 1] == first[1, 2] > 0 and first[3, 3] > 0 and first[3, 3] != first[0, 0]
    assert counts[0, 0, 0, 0] == 3 and counts[0, 0, 3, 4] == 4
    assert (labels[0, 0][mask[0, 0] == 0] == 0).all() and (counts[0, 0][mask[0, 0] == 0] == 0).all()
    assert counts[1, 0, 2, 2] == 25 - 7  # the background of the first is one component of the second


def test_sam2_fills_holes_up_to_the_area_threshold_on_a_cpu():
    from sam2.utils import misc

    original = misc.get_connected_components
    try:
        installed = use_cpu_connected_components()
        assert installed != has_cuda_extension()
        assert misc.get_connected_components is (connected_components if installed else original)
        scores = torch.full((1, 1, 9, 9), 2.0)
        scores[0, 0, 1:3, 1:3] = -1.0  # a hole of 4 pixels: filled with 8
        scores[0, 0, 5:8, 4:7] = -0.5  # a hole of 9 pixels: kept
        scores[0, 0, 4, 0] = -3.0  # one pixel on the edge, still a component of 1: filled
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # sam2 warns and skips when its kernel is missing
            filled = misc.fill_holes_in_mask_scores(scores.clone(), 8)
        expected = scores.clone()
        expected[0, 0, 1:3, 1:3] = 0.1
        expected[0, 0, 4, 0] = 0.1
        assert torch.equal(filled, expected)
    finally:
        misc.get_connected_components = original


def test_a_mask_of_another_shape_is_refused():
    with pytest.raises(ValueError, match=r"\[N,1,H,W\]"):
        connected_components(torch.zeros(3, 4, 4))


def test_the_installed_sam2_has_every_internal_we_use():
    assert internals_problems() == []


def test_a_changed_internal_is_named_with_the_version(monkeypatch):
    from sam2.sam2_video_predictor import SAM2VideoPredictor

    def renamed(self, inference_state, output_dict, frame_idx, batch_size, is_init_cond_frame, points, masks):
        raise AssertionError("not called")

    monkeypatch.setattr(SAM2VideoPredictor, "_run_single_frame_inference", renamed)
    monkeypatch.delattr(SAM2VideoPredictor, "_obj_id_to_idx")
    problems = internals_problems()
    assert all(f"sam2 {sam2_version()}" in p for p in problems) and len(problems) == 2
    assert any("_obj_id_to_idx is gone" in p for p in problems)
    assert any(
        "lacks parameters ['point_inputs', 'mask_inputs', 'reverse', 'run_mem_encoder']" in p
        for p in problems
    )


def test_our_inference_state_has_init_states_keys_and_types():
    state = new_inference_state([], 3, (20, 30), torch.device("cpu"))
    assert set(state) == INFERENCE_STATE_KEYS
    assert (state["video_height"], state["video_width"], state["num_frames"]) == (20, 30, 3)
    assert state["storage_device"] == torch.device("cpu") and state["offload_video_to_cpu"]
