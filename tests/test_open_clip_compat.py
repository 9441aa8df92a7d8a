"""open_clip's internals that EVF uses (`evf.open_clip_compat`) are in the installed open_clip; the
check names open_clip's version when one is not."""

import open_clip
import pytest
import torch

from evf import open_clip_compat
from evf.open_clip_compat import build_open_clip_tower, internals_problems


def test_the_installed_open_clip_has_every_internal_we_use():
    assert internals_problems() == []


def test_a_changed_internal_is_named_with_the_version(monkeypatch):
    def changed(embed_dim, config, quick_gelu=False):  # a renamed parameter
        raise AssertionError("not called")

    monkeypatch.setattr(open_clip.model, "_build_text_tower", changed)
    problems = internals_problems()
    assert len(problems) == 1
    assert f"open_clip_torch {open_clip_compat.open_clip_version()}" in problems[0]
    assert "_build_text_tower takes ['embed_dim', 'config', 'quick_gelu']" in problems[0]
    monkeypatch.delattr(open_clip.model, "_build_vision_tower")
    assert any("_build_vision_tower is gone" in p for p in internals_problems())


def test_a_tower_is_the_one_open_clip_builds_inside_clip():
    cfg = {"context_length": 8, "vocab_size": 50, "width": 32, "heads": 2, "layers": 1}
    vision = {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16}
    torch.manual_seed(0)
    full = open_clip.CLIP(embed_dim=16, vision_cfg=vision, text_cfg=cfg)
    torch.manual_seed(0)
    ours = build_open_clip_tower("vision", 16, vision, False)
    assert type(ours) is type(full.visual)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in full.visual.state_dict().items()
    }
    with pytest.raises(KeyError):
        build_open_clip_tower("audio", 16, cfg, False)
