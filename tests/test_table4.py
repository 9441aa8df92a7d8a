"""The Table 4 rows (configs/ablations/table4/*.yaml) train exactly the parts they name: one optimiser
step of `EVFSAMModule` on the tiny model leaves every frozen part, buffers included, bit-identical
and in eval mode."""

from pathlib import Path

import pytest
import torch
import yaml

from evf.decode import decode
from evf.losses import mask_losses
from evf.model import TrainableParts
from evf.module import EVFSAMModule

ROWS = sorted((Path(__file__).resolve().parents[1] / "configs/ablations/table4").glob("*.yaml"))


def test_there_are_four_rows():
    assert len(ROWS) == 4
    flags = {tuple(sorted(yaml.safe_load(p.read_text())["model"]["trainable"].items())) for p in ROWS}
    assert len(flags) == 4


@pytest.mark.parametrize("row", ROWS, ids=lambda p: p.stem)
def test_one_step_trains_exactly_the_rows_parts(row, shapes_batch):
    config = yaml.safe_load(row.read_text())
    assert set(config) == {"model"} and set(config["model"]) == {"trainable"}  # only the flags
    trainable = TrainableParts(**config["model"]["trainable"])
    assert trainable.projector and not trainable.image_encoder
    module = EVFSAMModule("beit3_tiny", "sam_tiny", trainable=trainable).train()
    parts = module.model.parts()
    frozen = [name for name in parts if not getattr(trainable, name)]
    before = {name: {k: v.clone() for k, v in parts[name].state_dict().items()} for name in parts}

    optimizer = torch.optim.AdamW(module._param_groups(), lr=1e-2)
    terms = mask_losses([p.logits for p in decode(module.model, shapes_batch)], shapes_batch.masks)
    (terms["bce"] + terms["dice"]).backward()
    optimizer.step()

    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for name, part in parts.items():
        params = list(part.parameters())
        if name in frozen:
            assert not any(p.requires_grad or p.grad is not None for p in params), name
            assert not any(id(p) in in_optimizer for p in params), name
            assert not any(m.training for m in part.modules()), name
            after = part.state_dict()
            assert all(torch.equal(after[k], v) for k, v in before[name].items()), name
        else:
            assert all(id(p) in in_optimizer for p in params), name
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), name
            assert part.training, name
            after = part.state_dict()
            assert any(not torch.equal(after[k], v) for k, v in before[name].items()), name
