"""Grid files: schema checks, expansion (axes x rows), run names, override flags."""

from pathlib import Path

import pytest
import yaml

from evf.sweep.grid import Grid, override_flags
from evf.sweep.report import PAPER_TABLES

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))


def test_axes_are_a_cartesian_product_in_file_order():
    grid = Grid.from_dict(
        {"name": "g", "axes": {"model.encoder": ["beit3_tiny", "clip_tiny"], "seed_everything": [0, 1]}}
    )
    runs = grid.expand()
    assert [r.name for r in runs] == [
        "encoder=beit3_tiny,seed=0",
        "encoder=beit3_tiny,seed=1",
        "encoder=clip_tiny,seed=0",
        "encoder=clip_tiny,seed=1",
    ]
    assert runs[1].overrides == {"model.encoder": "beit3_tiny", "seed_everything": 1}
    assert runs[1].group == "encoder=beit3_tiny"  # seeds of one config share a group


def test_rows_cross_the_axes_and_carry_names_and_paper_rows():
    grid = Grid.from_dict({
        "name": "t3",
        "base_overrides": {"trainer.max_steps": 10, "model.encoder": "beit3_large"},
        "rows": [
            {"name": "text", "paper_row": "table3/beit3_l_text", "model.encoder_kwargs.fusion": "text"},
            {"model.encoder": "clip_tiny", "model.encoder_kwargs.fusion": "late"},  # unnamed: keys label it
        ],
        "axes": {"seed_everything": [0, 1]},
    })  # fmt: skip
    runs = grid.expand()
    assert [r.name for r in runs] == [
        "text,seed=0",
        "text,seed=1",
        "encoder=clip_tiny,fusion=late,seed=0",
        "encoder=clip_tiny,fusion=late,seed=1",
    ]
    assert runs[0].paper_row == "table3/beit3_l_text" and runs[2].paper_row is None
    # base_overrides first, then the row (which wins over them), then the axes
    assert runs[2].overrides == {
        "trainer.max_steps": 10,
        "model.encoder": "clip_tiny",
        "model.encoder_kwargs.fusion": "late",
        "seed_everything": 0,
    }
    assert [r.group for r in runs[::2]] == ["text", "encoder=clip_tiny,fusion=late"]


def test_override_flags_are_lightningcli_flags(monkeypatch):
    monkeypatch.setenv("EVF_WEIGHTS", "/weights")
    flags = override_flags({
        "model.encoder": "beit3_tiny",
        "model.encoder_kwargs": {"fusion": "early", "fusion_layers": 2},
        "model.trainable.image_encoder": True,
        "model.tokenizer": None,
        "model.optim.lr": 0.0005,
        "model.encoder_checkpoint": "$EVF_WEIGHTS/beit3.pth",
        "trainer.devices": [0, 1],
    })  # fmt: skip
    assert flags == [
        "--model.encoder=beit3_tiny",
        '--model.encoder_kwargs={"fusion":"early","fusion_layers":2}',
        "--model.trainable.image_encoder=true",
        "--model.tokenizer=null",
        "--model.optim.lr=0.0005",
        "--model.encoder_checkpoint=/weights/beit3.pth",
        "--trainer.devices=[0,1]",
    ]


def test_names_disambiguate_equal_last_parts_and_directories_are_path_safe():
    grid = Grid.from_dict({
        "axes": {"model.encoder_kwargs.feature": ["cls_image"], "data.init_args.feature": ["x/y"]},
    })  # fmt: skip
    (run,) = grid.expand()
    assert run.name == "model.encoder_kwargs.feature=cls_image,data.init_args.feature=x/y"
    assert run.dirname == "model.encoder_kwargs.feature=cls_image,data.init_args.feature=x_y"


def test_dict_values_get_readable_names():
    grid = Grid.from_dict(
        {"name": "g", "axes": {"model.encoder_kwargs": [{"fusion": "early", "fusion_layers": 2}]}}
    )
    assert grid.expand()[0].name == "encoder_kwargs=fusion=early+fusion_layers=2"


def test_a_grid_without_rows_or_axes_is_one_run_named_after_the_grid():
    (run,) = Grid.from_dict({"name": "single", "base_overrides": {"trainer.max_steps": 5}}).expand()
    assert run.name == "single" and run.overrides == {"trainer.max_steps": 5}


@pytest.mark.parametrize(
    "data, message",
    [
        ({"axis": {}}, "unknown grid key"),
        ({"axes": {"seed_everything": 0}}, "non-empty list"),
        ({"axes": {"seed_everything": []}}, "non-empty list"),
        ({"rows": ["beit3_tiny"]}, "mapping"),
        ({"checkpoint": "first"}, "best"),
        ({"rows": [{"seed_everything": 1}], "axes": {"seed_everything": [0]}}, "sets axis key"),
        ({"rows": [{"name": "a"}, {"name": "a"}]}, "share the directory"),
    ],
)
def test_invalid_grids_are_clear_errors(data, message):
    with pytest.raises(ValueError, match=message):
        Grid.from_dict(data).expand()


def test_from_file_defaults_the_name_to_the_file_stem(tmp_path):
    path = tmp_path / "fusion.yaml"
    path.write_text(yaml.safe_dump({"axes": {"seed_everything": [0]}, "resources": {"partition": "gpu"}}))
    grid = Grid.from_file(path)
    assert grid.name == "fusion" and grid.resources == {"partition": "gpu"}
    assert (grid.validate, grid.test, grid.checkpoint) == (True, False, "best")


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_shipped_grids_expand_and_name_existing_paper_rows(path):
    grid = Grid.from_file(path)
    runs = grid.expand()
    assert runs and (ROOT / grid.base).suffix == ".yaml", f"{path.name}: no runs or no base config"
    paper = yaml.safe_load(PAPER_TABLES.read_text())["tables"]
    for run in runs:
        if run.paper_row:
            assert run.paper_row in paper[grid.paper_table]["rows"], f"{run.name}: unknown paper row"
