"""Parity with EVF-SAM's zero-shot video inference (hustvl/EVF-SAM ``inference_video.py`` and
``model/evf_sam2_video.py``), re-derived here from sam2's own API as the official script calls it.

The official path: ``SAM2VideoPredictor.init_state(video_path=<JPEG folder>)`` (sam2's loader),
EVF-SAM's ``add_new_text(frame 0, obj_id, text=feat)`` (sam2's ``add_new_points`` with
``point_inputs=None`` and a prompt encoder patched to take ``text_embeds``: no point tokens, the text
token alone, ``no_mask_embed`` as the dense prompt), then ``propagate_in_video``. EVF-SAM vendors sam2
1.0, whose predictor sam2 keeps as ``sam2_video_predictor_legacy`` (objects batched together); the
text token is the projected [CLS] feature of the first frame, computed by our encoder for both paths
(its parity with the official BEIT-3 is tested in tests/test_pretrained.py).
"""

import pytest
import torch
from sam2.build_sam import build_sam2_video_predictor

from evf.sam_backends.sam2_build import video_config
from evf.video.frames import VideoFrames
from evf.video.track import TextTracker
from evf.video.tracker import build_video_predictor

from .helpers import small_clip, tiny_sam2_model

LEGACY = "++model._target_=sam2.sam2_video_predictor_legacy.SAM2VideoPredictor"


def official_logits(weights: dict, frames_dir, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Per-frame ``[n,H,W]`` logits of EVF-SAM's video inference with ``tokens`` ``[n,1,C]`` on frame 0."""
    config, overrides = video_config("sam2_tiny")
    official = build_sam2_video_predictor(
        config, None, device="cpu", hydra_overrides_extra=[LEGACY, *overrides]
    )
    official.load_state_dict(weights, strict=True)
    state = official.init_state(video_path=str(frames_dir))
    official.reset_state(state)
    encoder = official.sam_prompt_encoder
    grid = encoder.image_embedding_size
    for obj_id, token in enumerate(tokens, start=1):
        # EVF-SAM's patched PromptEncoder(points=None, boxes=None, masks=None, text_embeds=token).
        no_mask = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, *grid)
        encoder.forward = lambda points, boxes, masks, token=token, dense=no_mask: (token[None], dense)
        obj_idx = official._obj_id_to_idx(state, obj_id)
        out, _ = official._run_single_frame_inference(
            inference_state=state,
            output_dict=state["output_dict_per_obj"][obj_idx],
            frame_idx=0,
            batch_size=1,
            is_init_cond_frame=True,
            point_inputs=None,
            mask_inputs=None,
            reverse=False,
            run_mem_encoder=False,
            prev_sam_mask_logits=None,
        )
        del encoder.forward  # back to sam2's PromptEncoder.forward for tracking
        state["temp_output_dict_per_obj"][obj_idx]["cond_frame_outputs"][0] = out
        # EVF-SAM comments out sam2's check that consolidated frames received point or mask inputs;
        # registering frame 0 as this object's input frame keeps that check satisfied instead.
        state["point_inputs_per_obj"][obj_idx][0] = None
    return [logits[:, 0] for _, _, logits in official.propagate_in_video(state)]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("prompts", "length"),
    [(["the red circle"], 20), (["the red circle", "the yellow square"], 8)],
)
def test_per_frame_logits_equal_the_official_video_path(tmp_path, prompts, length):
    # 20 frames > the memory window (16): our pruned state must not change what is read.
    _, frames_dir, _ = small_clip(tmp_path, num_frames=length)
    model = tiny_sam2_model()
    predictor = build_video_predictor(model, memory=None, seed=0)
    frames = VideoFrames(frames_dir)
    tracker = TextTracker(model, predictor, frames, prompts)
    tokens = tracker.tokens(frames.read(0), range(len(prompts)))
    ours = [result.logits for result in tracker.run()]
    theirs = official_logits(predictor.state_dict(), frames_dir, tokens)

    assert len(ours) == len(theirs) == length
    kept = tracker.state["output_dict_per_obj"][0]["non_cond_frame_outputs"]
    assert len(kept) == min(length - 1, predictor.memory_window() + 1)  # frames k - window ... k
    for k, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"frame {k}")
    # Real masks, not the constant logits of an absent object, and they change as the clip plays.
    assert all((a > 0).any() and (a <= 0).any() for a in ours)
    assert not torch.equal(ours[0] > 0, ours[-1] > 0)


@pytest.mark.slow
def test_the_comparison_sees_the_text_token(tmp_path):
    """The comparison above can fail: another token (another expression) changes the logits."""
    _, frames_dir, _ = small_clip(tmp_path, num_frames=8)
    model = tiny_sam2_model()
    predictor = build_video_predictor(model, memory=None, seed=0)
    frames = VideoFrames(frames_dir)
    tracker = TextTracker(model, predictor, frames, ["the red circle"])
    ours = [result.logits for result in tracker.run()]
    other = tracker.tokens(frames.read(0), [0]) + 0.5
    theirs = official_logits(predictor.state_dict(), frames_dir, other)
    assert not torch.allclose(ours[0], theirs[0], atol=1e-2)


def _model_with_small_holes():
    """The tiny model with its masks turned mostly foreground with small background specks (the
    hypernetworks' last layer negated, the upscaling made noisy): holes that EVF-SAM2's
    ``fill_hole_area=8`` fills, on every frame of the clip."""
    torch.manual_seed(0)
    model = tiny_sam2_model()
    decoder = model.backend.mask_decoder
    with torch.no_grad():
        for layer in decoder.output_upscaling.modules():
            if isinstance(layer, torch.nn.ConvTranspose2d):
                layer.weight.normal_(0, 0.3)
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.neg_()
            mlp.layers[-1].bias.neg_()
    return model


@pytest.mark.slow
def test_hole_filling_changes_pixels_and_equals_the_official_path(tmp_path):
    """sam2 here has no CUDA extension: both paths fill holes through `evf.sam2_compat`'s CPU
    connected components (whose rule tests/test_sam2_compat.py checks), as EVF-SAM2 does on a GPU."""
    _, frames_dir, _ = small_clip(tmp_path, num_frames=8)
    model = _model_with_small_holes()
    predictor = build_video_predictor(model, memory=None, seed=0)
    assert predictor.fill_hole_area == 8
    frames = VideoFrames(frames_dir)
    tracker = TextTracker(model, predictor, frames, ["the red circle"])
    tokens = tracker.tokens(frames.read(0), [0])
    ours = [result.logits for result in tracker.run()]
    theirs = official_logits(predictor.state_dict(), frames_dir, tokens)
    for k, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"frame {k}")

    predictor.fill_hole_area = 0  # what a sam2 without the extension did before: no filling
    unfilled = [result.logits for result in TextTracker(model, predictor, frames, ["the red circle"]).run()]
    flipped = [((a > 0) != (b > 0)) for a, b in zip(ours, unfilled, strict=True)]
    assert all(f.sum() > 0 for f in flipped)  # frame 0, and through the memory every later frame
    assert (ours[0][flipped[0]] > 0).all() and (unfilled[0][flipped[0]] <= 0).all()  # holes filled
