"""The SAM-2 video model built from an EVF backend: configs, weights and the memory modules."""

import pytest
import torch
from hydra import compose
from safetensors.torch import load_file, save_file

import evf
from evf.checkpoint import CheckpointError
from evf.sam_backends.sam2_build import VARIANTS, video_config
from evf.tools.export import export_release
from evf.video import VideoError
from evf.video.tracker import backend_state, build_video_predictor, read_memory_weights

from .helpers import tiny_sam2_model


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_sam2_variant_has_a_video_config_with_its_image_path(variant):
    config, overrides = video_config(variant)
    trunk = compose(config_name=config, overrides=overrides).model.image_encoder.trunk
    assert trunk.embed_dim == VARIANTS[variant]["embed_dim"]
    hiera_default = (2, 3, 16, 3)  # what sam2's Hiera builds when a config leaves `stages` out
    assert tuple(trunk.get("stages", hiera_default)) == VARIANTS[variant]["stages"]


def test_video_model_holds_the_backend_weights_and_seeded_memory():
    model = tiny_sam2_model()
    predictor = build_video_predictor(model, seed=3)
    state = predictor.state_dict()
    ours = backend_state(model.backend)
    assert all(torch.equal(state[k], v) for k, v in ours.items())
    memory = {k for k in state if k not in ours}
    assert {k.split(".")[0] for k in memory} == {
        "memory_attention", "memory_encoder", "maskmem_tpos_enc", "no_mem_pos_enc", "mask_downsample",
        "obj_ptr_proj", "no_obj_ptr",
    }  # fmt: skip
    again = build_video_predictor(model, seed=3).state_dict()
    other = build_video_predictor(model, seed=4).state_dict()
    assert all(torch.equal(again[k], state[k]) for k in memory)
    assert not torch.equal(other["memory_encoder.out_proj.weight"], state["memory_encoder.out_proj.weight"])
    with pytest.raises(VideoError, match="SAM-2 backend"):
        build_video_predictor(evf.create_model("beit3_tiny", "efficient_sam_tiny"))


def test_memory_weights_from_an_official_checkpoint_and_a_release(tmp_path):
    model = tiny_sam2_model()
    full = build_video_predictor(model, seed=5).state_dict()
    ours = backend_state(model.backend)
    memory = {k: v for k, v in full.items() if k not in ours}
    torch.save({"model": full}, tmp_path / "sam2_tiny.pt")  # an official sam2 checkpoint holds SAM2Base
    assert read_memory_weights(tmp_path / "sam2_tiny.pt").keys() == memory.keys()

    # A release: EVF-SAM2's vendored sam2 names the CXBlock layer scale `weight`, not `gamma`.
    release = tmp_path / "release"
    export_release(model, release, "beit3_tiny", "sam2_tiny")
    with pytest.raises(CheckpointError, match="no SAM-2 memory modules"):
        read_memory_weights(release)  # our exports hold the image path only
    tensors = load_file(release / "model.safetensors")
    tensors.update({"visual_model." + k.replace(".gamma", ".weight"): v for k, v in memory.items()})
    save_file(tensors, release / "model.safetensors")
    loaded = read_memory_weights(release)
    assert loaded.keys() == memory.keys() and all(torch.equal(loaded[k], memory[k]) for k in memory)
    predictor = build_video_predictor(model, loaded, seed=0)
    assert torch.equal(
        predictor.state_dict()["memory_encoder.fuser.layers.0.gamma"],
        memory["memory_encoder.fuser.layers.0.gamma"],
    )

    del loaded["no_obj_ptr"]
    with pytest.raises(CheckpointError, match="no_obj_ptr"):
        build_video_predictor(model, loaded)
