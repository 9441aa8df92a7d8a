"""Results tables: the paper's Table 2 layout for the eight RefCOCO-family splits, a generic table
otherwise, written by ``evf validate`` / ``evf test`` (the module's epoch-end hooks)."""

import json

import lightning as L
import pytest
from lightning.pytorch.loggers import TensorBoardLogger

from evf.datamodules import ShapesDataModule
from evf.module import EVFSAMModule
from evf.results import TABLE2_SPLITS, results_markdown, results_record, write_results

HEADER = (
    "| Model | RefCOCO val | RefCOCO testA | RefCOCO testB | RefCOCO+ val | RefCOCO+ testA | RefCOCO+ testB "
    "| RefCOCOg val | RefCOCOg test | AVG |"
)


def _table2_results(extra=()):
    values = {s: {"ciou": 0.5 + 0.01 * i, "giou": 0.6 + 0.01 * i} for i, s in enumerate(TABLE2_SPLITS)}
    return {**values, **{s: {"ciou": 0.25, "giou": float("nan")} for s in extra}}


def test_table2_layout_has_the_papers_columns_and_average():
    md = results_markdown(_table2_results(), "test", "beit3_large + sam_vit_h")
    lines = md.splitlines()
    assert lines.count(HEADER) == 2  # cIoU and gIoU
    ciou_row = lines[lines.index("## cIoU") + 4]
    assert (
        ciou_row
        == "| beit3_large + sam_vit_h | 50.0 | 51.0 | 52.0 | 53.0 | 54.0 | 55.0 | 56.0 | 57.0 | 53.5 |"
    )
    record = results_record(_table2_results(), "test", "m")
    assert record["layout"] == "table2" and record["columns"] == list(TABLE2_SPLITS)
    assert record["avg"]["ciou"] == pytest.approx(0.535) and record["avg"]["giou"] == pytest.approx(0.635)


def test_other_splits_go_to_their_own_table_and_stay_out_of_the_average():
    results = _table2_results(extra=["grefcoco/val"])
    md = results_markdown(results, "validate", "m")
    assert "### cIoU, other splits" in md and "| m | 25.0 |" in md and "| m | – |" in md
    record = results_record(results, "validate", "m")
    assert record["extra_columns"] == ["grefcoco/val"] and record["avg"]["ciou"] == pytest.approx(0.535)


def test_other_split_sets_get_a_generic_table(tmp_path):
    results = {"shapes/val": {"ciou": 0.4, "giou": 0.3}, "refcoco/val": {"ciou": 0.6, "giou": 0.5}}
    md_path, json_path = write_results(results, "validate", tmp_path, "m")
    md = md_path.read_text()
    assert "| Model | shapes/val | RefCOCO val | AVG |" in md and "| m | 40.0 | 60.0 | 50.0 |" in md
    record = json.loads(json_path.read_text())
    assert record["layout"] == "generic" and record["ciou"] == {"shapes/val": 0.4, "refcoco/val": 0.6}


class EightSplits(ShapesDataModule):
    """The RefCOCO recipe's eight split names, each one synthetic image."""

    def eval_datasets(self, stage):
        dataset = self._split("val" if stage == "validate" else "test")
        return dict.fromkeys(TABLE2_SPLITS, dataset)


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_validate_and_test_write_the_table2_results_of_every_split(tmp_path, stage):
    module = EVFSAMModule("beit3_tiny", "sam_tiny", num_logged_images=0)
    data = EightSplits(num_train=1, num_val=1, num_test=1, eval_batch_size=1, num_workers=0)
    logger = TensorBoardLogger(tmp_path, name="eval")
    trainer = L.Trainer(
        accelerator="cpu", logger=logger, enable_progress_bar=False, enable_model_summary=False,
        use_distributed_sampler=False,
    )  # fmt: skip
    per_loader = (trainer.validate if stage == "validate" else trainer.test)(module, datamodule=data)
    metrics = {k: v for logged in per_loader for k, v in logged.items()}
    record = json.loads((tmp_path / "eval" / "version_0" / f"results_{stage}.json").read_text())
    prefix = "val" if stage == "validate" else "test"
    assert record["layout"] == "table2"
    assert record["ciou"] == {s: pytest.approx(metrics[f"{prefix}/{s}/ciou"]) for s in TABLE2_SPLITS}
    assert HEADER in (tmp_path / "eval" / "version_0" / f"results_{stage}.md").read_text()


def test_the_files_hold_every_kind_skipped_counts_and_the_pooled_metrics_never_nan(tmp_path):
    from evf.results import StageResults

    values = StageResults(
        per_split={"shapes/val": {"ciou": 0.4, "giou": 0.5, "n_acc": 0.7}},
        per_kind={"shapes/val": {"colour": {"ciou": 0.3, "giou": 0.35, "pr@0.7": 0.2},
                                 "absent_colour": {"ciou": 0.0, "giou": 0.7, "pr@0.7": float("nan")}}},
        skipped={"shapes/val": 2},
        pooled={"ciou": 0.4, "giou": 0.5},
    )  # fmt: skip
    md_path, json_path = write_results(values, "validate", tmp_path, "m")
    text = json_path.read_text()
    assert "NaN" not in text
    record = json.loads(text)
    assert record["per_kind"]["shapes/val"]["absent_colour"]["pr@0.7"] is None
    assert record["per_kind"]["shapes/val"]["colour"] == {"ciou": 0.3, "giou": 0.35, "pr@0.7": 0.2}
    assert record["skipped"] == {"shapes/val": 2} and record["pooled"] == {"ciou": 0.4, "giou": 0.5}
    md = md_path.read_text()
    assert (
        "| shapes/val | absent_colour | 0.0 | 70.0 | – |" in md
        and "| shapes/val | colour | 30.0 | 35.0 | 20.0 |" in md
    )
    assert "| shapes/val | 2 |" in md and "nan" not in md.lower()


def test_a_validation_writes_every_kind_it_logged(tmp_path):
    module = EVFSAMModule("beit3_tiny", "sam_tiny", num_logged_images=0)
    data = ShapesDataModule(num_train=1, num_val=2, eval_batch_size=2, num_workers=0)
    trainer = L.Trainer(
        accelerator="cpu", logger=TensorBoardLogger(tmp_path, name="eval"), enable_progress_bar=False,
        enable_model_summary=False, use_distributed_sampler=False,
    )  # fmt: skip
    (logged,) = trainer.validate(module, datamodule=data)
    record = json.loads((tmp_path / "eval" / "version_0" / "results_validate.json").read_text())
    kinds = {k.split("/")[-2] for k in logged if k.count("/") == 4 and k.endswith("/ciou")}
    assert kinds and set(record["per_kind"]["shapes/val"]) == kinds
    for kind in kinds:
        assert record["per_kind"]["shapes/val"][kind]["ciou"] == pytest.approx(
            logged[f"val/shapes/val/{kind}/ciou"]
        )
    assert record["pooled"]["ciou"] == pytest.approx(logged["val/ciou"])
