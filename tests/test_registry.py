from importlib.metadata import EntryPoint

import pytest

import evf
from evf.registry import Registry


def test_duplicate_name_raises():
    reg = Registry("thing", "evf.test_things")
    reg.register("a", info=None)(lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", info=None)(lambda: 2)


def test_unknown_name_lists_closest_matches():
    with pytest.raises(KeyError, match="sam_vit_h"):
        evf.create_backend("sam_vit_hh")
    with pytest.raises(KeyError, match="beit3_large"):
        evf.create_encoder("beit3_larg")


def test_tiny_variants_registered_beside_real_ones():
    assert {"beit3_base", "beit3_large", "beit3_tiny"} <= set(evf.list_encoders())
    assert {"sam_vit_b", "sam_vit_l", "sam_vit_h", "sam_tiny"} <= set(evf.list_backends())
    assert evf.list_backends("sam_vit_*") == ["sam_vit_b", "sam_vit_h", "sam_vit_l"]


def test_entry_point_plugins_are_loaded_on_first_lookup(tmp_path, monkeypatch):
    # A third-party module that registers a backend when imported, exposed as an entry point.
    (tmp_path / "evf_fake_plugin.py").write_text(
        "from evf.sam_backends import BACKENDS\n"
        "from evf.sam_backends.sam import sam_tiny, _info\n"
        "BACKENDS.register('plugin_sam', info=_info(128, 64))(sam_tiny)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin = EntryPoint(name="fake", value="evf_fake_plugin", group="evf.sam_backends")
    monkeypatch.setattr(
        "evf.registry.entry_points", lambda group: [plugin] if group == "evf.sam_backends" else []
    )
    registry = evf.sam_backends.BACKENDS
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    assert "plugin_sam" in evf.list_backends()
    assert evf.create_backend("plugin_sam").prompt_dim == 64
