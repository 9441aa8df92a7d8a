import torch

from evf.model import TrainableParts
from evf.module import EVFSAMModule, OptimConfig


def _loss(module, batch):
    from evf.losses import mask_losses

    terms = mask_losses([p.logits for p in module(batch)], batch.masks)
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
            [p.logits for p in module(shapes_batch)], [p.logits for p in loaded(shapes_batch)], strict=True
        ):
            assert torch.equal(a, b)
