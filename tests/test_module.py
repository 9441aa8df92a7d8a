import torch

from evf.decode import decode
from evf.model import TrainableParts
from evf.module import EVFSAMModule, OptimConfig


def _loss(module, batch):
    from evf.losses import mask_losses

    terms = mask_losses([p.logits for p in decode(module.model, batch)], batch.masks)
    return terms["bce"] + terms["dice"]


def test_loss_goes_down_when_overfitting_one_batch(shapes_batch):
    module = EVFSAMModule("beit3_tiny", "sam_tiny", trainable=TrainableParts(image_encoder=True))
    module.train()
    opt = torch.optim.AdamW(module.model.parameters(), lr=1e-3)
    first = None
    for _ in range(25):
        loss = _loss(module, shapes_batch)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.6 * first, (first, loss.item())


def test_param_groups_follow_trainable_flags():
    module = EVFSAMModule(
        "beit3_tiny", "sam_tiny",
        trainable=TrainableParts(encoder=False, prompt_encoder=False),
        optim=OptimConfig(weight_decay=0.05),
    )  # fmt: skip
    groups = module._param_groups()
    in_opt = {id(p) for g in groups for p in g["params"]}
    parts = module.model.parts()
    for name in ("encoder", "prompt_encoder", "image_encoder"):
        assert not any(id(p) in in_opt for p in parts[name].parameters()), name
    for name in ("projector", "mask_decoder"):
        assert all(id(p) in in_opt for p in parts[name].parameters()), name
    for g in groups:
        assert g["weight_decay"] == (0.05 if all(p.ndim >= 2 for p in g["params"]) else 0.0)


def test_save_load_gives_identical_logits(tmp_path, shapes_batch):
    import lightning as L

    module = EVFSAMModule("beit3_tiny", "sam_tiny").eval()
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(module)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = EVFSAMModule.load_from_checkpoint(path).eval()
    with torch.no_grad():
        for a, b in zip(
            [p.logits for p in decode(module.model, shapes_batch)],
            [p.logits for p in decode(loaded.model, shapes_batch)],
            strict=True,
        ):
            assert torch.equal(a, b)


def test_decoder_waits_for_its_start_step_at_its_own_lr_scale(shapes_batch):
    module = EVFSAMModule(
        "beit3_tiny", "sam_tiny", optim=OptimConfig(decoder_start_step=2, decoder_lr_scale=0.1)
    )
    groups = module._param_groups()
    decoder = {id(p) for p in module.model.backend.mask_decoder.parameters()}
    decoder_groups = [g for g in groups if any(id(p) in decoder for p in g["params"])]
    assert {g["part"] for g in decoder_groups} == {"decoder"}
    assert all(g["lr"] == module.optim.lr * 0.1 for g in decoder_groups)

    class _Trainer:  # what configure_optimizers reads of the trainer
        estimated_stepping_batches = 10

    module.trainer = _Trainer()
    config = module.configure_optimizers()
    opt, sched = config["optimizer"], config["lr_scheduler"]["scheduler"]
    weight = module.model.backend.mask_decoder.iou_token.weight
    projector = module.model.projector[0].weight
    snapshots = []
    for _ in range(3):
        snapshots.append((weight.detach().clone(), projector.detach().clone()))
        opt.zero_grad()
        _loss(module, shapes_batch).backward()
        opt.step()
        sched.step()
    snapshots.append((weight.detach().clone(), projector.detach().clone()))
    assert torch.equal(snapshots[0][0], snapshots[2][0])  # steps 0 and 1: the decoder holds
    assert not torch.equal(snapshots[2][0], snapshots[3][0])  # step 2: it trains
    assert not torch.equal(snapshots[0][1], snapshots[1][1])  # the text side trains from step 0
