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


def test_void_pixels_give_no_loss_and_no_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 8, requires_grad=True)
    targets = torch.rand(2, 6, 8) > 0.5
    void = torch.zeros(6, 8, dtype=torch.bool)
    void[1:4, 2:7] = True
    terms = mask_losses([logits], [targets], [void])
    (terms["bce"] + terms["dice"]).backward()
    assert logits.grad[:, void].abs().max() == 0 and logits.grad[:, ~void].abs().min() > 0
    # Whatever the model says on void pixels, and whatever the target holds there: the same loss.
    changed = logits.detach().clone()
    changed[:, void] = 50.0
    flipped = targets.clone()
    flipped[:, void] = ~flipped[:, void]
    again = mask_losses([changed], [flipped], [void])
    torch.testing.assert_close(again["bce"], terms["bce"].detach())
    torch.testing.assert_close(again["dice"], terms["dice"].detach())
    # The BCE is the mean over the valid pixels only, and without void nothing changes.
    valid = ~void
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[:, valid], targets[:, valid].float()
    )
    torch.testing.assert_close(terms["bce"], expected)
    torch.testing.assert_close(
        mask_losses([logits], [targets], [None])["bce"], sigmoid_bce(logits, targets.float()).mean()
    )


def test_void_pixels_count_in_neither_intersection_nor_union(shapes_batch):
    """As VOC's 255: a false positive on a void pixel costs nothing."""
    from evf.decode import Prediction
    from evf.evaluation import EvaluationMetrics

    target = torch.zeros(1, 4, 4, dtype=torch.bool)
    target[0, :2] = True  # 8 pixels
    predicted = torch.zeros(1, 4, 4, dtype=torch.bool)
    predicted[0, :3] = True  # 12 pixels: 4 false positives, all on row 2
    void = torch.zeros(4, 4, dtype=torch.bool)
    void[2] = True
    prediction = Prediction(
        logits=predicted.float(),
        masks=predicted,
        scores=torch.ones(1),
        present=torch.ones(1, dtype=torch.bool),
    )
    batch = shapes_batch
    batch.masks, batch.kinds, batch.failures = [target], ["colour"], []
    for given, ciou in ((None, 8 / 12), ([void], 1.0)):
        metrics = EvaluationMetrics()
        metrics.reset(1, [("colour",)], torch.device("cpu"))
        batch.void = given
        metrics.update(0, batch, [prediction])
        _, results = metrics.results(["val"], "val")
        assert results.per_split["val"]["ciou"] == pytest.approx(ciou)
        assert results.per_kind["val"]["colour"]["ciou"] == pytest.approx(ciou)
