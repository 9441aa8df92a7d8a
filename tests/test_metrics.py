import pytest
import torch

from evf.losses import dice, mask_losses, sigmoid_bce
from evf.metrics import ReferringIoU, pooled


def reference_ious(preds, targets):
    """Hand computation, one expression at a time, with plain Python sums."""
    inters, unions, ious = [], [], []
    for p, t in zip(preds, targets, strict=True):
        inter = int((p & t).sum())
        union = int((p | t).sum())
        inters.append(inter)
        unions.append(union)
        ious.append(1.0 if union == 0 else inter / union)
    return sum(inters) / sum(unions), sum(ious) / len(ious)


def test_ciou_giou_against_hand_computation_with_empty_cases():
    g = torch.Generator().manual_seed(0)
    preds = [torch.rand(5, 5, generator=g) > 0.5 for _ in range(4)]
    targets = [torch.rand(5, 5, generator=g) > 0.5 for _ in range(4)]
    preds.append(torch.zeros(5, 5, dtype=torch.bool))  # empty target predicted empty -> IoU 1
    targets.append(torch.zeros(5, 5, dtype=torch.bool))
    preds.append(torch.ones(5, 5, dtype=torch.bool))  # empty target, non-empty prediction -> IoU 0
    targets.append(torch.zeros(5, 5, dtype=torch.bool))
    preds.append(torch.zeros(5, 5, dtype=torch.bool))  # missed object -> IoU 0
    targets.append(torch.ones(5, 5, dtype=torch.bool))

    metric = ReferringIoU()
    metric.update(torch.stack(preds[:3]), torch.stack(targets[:3]))  # image 1: three expressions
    metric.update(torch.stack(preds[3:]), torch.stack(targets[3:]))  # image 2: four
    result = metric.compute()
    ciou, giou = reference_ious(preds, targets)
    assert result["ciou"].item() == pytest.approx(ciou, abs=1e-6)
    assert result["giou"].item() == pytest.approx(giou, abs=1e-6)


def test_losses_reward_the_right_mask():
    target = torch.zeros(2, 8, 8)
    target[:, 2:6, 2:6] = 1
    good = (target * 2 - 1) * 10
    bad = -good
    assert (sigmoid_bce(good, target) < sigmoid_bce(bad, target)).all()
    assert (dice(good, target) < 0.01).all() and (dice(bad, target) > 0.9).all()
    empty = torch.zeros(1, 8, 8)
    assert dice(torch.full((1, 8, 8), -10.0), empty).item() < 0.01  # empty predicted empty costs ~0
    terms = mask_losses([good[:1], good[1:]], [target[:1], target[1:]])
    assert set(terms) == {"bce", "dice"} and terms["bce"] < 1e-3


def test_pooled_metric_sums_the_splits_states():
    gen = torch.Generator().manual_seed(0)
    splits = [ReferringIoU(), ReferringIoU()]
    masks = []
    for metric, n in zip(splits, (3, 5), strict=True):
        pred, target = torch.rand(n, 9, 9, generator=gen) > 0.5, torch.rand(n, 9, 9, generator=gen) > 0.6
        metric.update(pred, target)
        masks.append((pred, target))
    pred, target = torch.cat([p for p, _ in masks]), torch.cat([t for _, t in masks])
    inter, union = (pred & target).flatten(1).sum(1).double(), (pred | target).flatten(1).sum(1).double()
    total = pooled(splits).compute()
    assert float(total["ciou"]) == pytest.approx(float(inter.sum() / union.sum()), rel=1e-6)
    assert float(total["giou"]) == pytest.approx(float((inter / union).mean()), rel=1e-6)
    assert float(splits[0].compute()["ciou"]) != pytest.approx(
        float(total["ciou"])
    )  # not a copy of one split
