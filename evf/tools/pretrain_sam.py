"""``evf pretrain-sam``: pretrain ``sam_tiny`` on shapes scenes the way SAM is trained, so that the
quickstart can use it the way the paper uses SAM-H: pretrained for point and box prompts, frozen.

    evf pretrain-sam --out evf/assets/sam_tiny_shapes.pt          # ~10 min on 2 CPU cores

SAM's interactive objective (Kirillov et al., 2023, section 3 and appendix A), at shapes scale:

* every object of every training scene is prompted, half of them with one foreground point drawn
  uniformly from the object, half with its bounding box jittered by noise of 10% of the box side
  (at most 20 px in the original image);
* a single point is ambiguous: the three multimask outputs are scored and only the best one takes
  the mask loss; boxes (and any prompt with several points) train the single-mask output (token 0,
  the one EVF-SAM decodes text with);
* then ``corrections`` rounds of corrective clicks: a point drawn uniformly from the error of the
  previous mask (foreground if missed, background if spurious) joins the prompt, and the previous
  low-resolution logits enter as the mask prompt;
* loss: focal + dice on the masks at the input resolution (SAM's 20:1), and the squared error of
  the IoU head against each output's true IoU.

Everything is seeded (scenes, prompts, corrections, initialisation): the same command writes the
same weights on the same machine. The file is the segment-anything layout (``image_encoder.*``,
``prompt_encoder.*``, ``mask_decoder.*``), so ``create_backend("sam_tiny", checkpoint=...)`` loads
it strictly like an official SAM checkpoint. `evaluate` reports point- and box-prompted mIoU.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt
from tqdm import tqdm

from evf.assets import SAM_TINY_SHAPES
from evf.datamodules.shapes import ShapesDataset
from evf.losses import dice
from evf.metrics import mask_iou_stats
from evf.optim import OptimConfig, lr_schedule
from evf.sam_backends import create_backend
from evf.sam_backends.sam import SamViTBackend
from evf.tools.seeding import deterministic_cpu

log = logging.getLogger(__name__)

FOCAL_WEIGHT, DICE_WEIGHT, IOU_WEIGHT = 20.0, 1.0, 1.0


@dataclass
class Prompts:
    """One group of prompts in the input frame: ``[N,K,2]`` points with ``[N,K]`` labels and/or
    ``[N,4]`` boxes; ``image_index [N]``; ``targets [N,S,S]`` bool masks in the (padded) input frame."""

    image_index: torch.Tensor
    targets: torch.Tensor | None
    coords: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    boxes: torch.Tensor | None = None

    def add_points(self, coords: torch.Tensor, labels: torch.Tensor) -> Prompts:
        if self.coords is None:
            return Prompts(self.image_index, self.targets, coords, labels, self.boxes)
        both = (torch.cat([self.coords, coords], 1), torch.cat([self.labels, labels], 1))
        return Prompts(self.image_index, self.targets, *both, self.boxes)


def input_frame_masks(masks: np.ndarray, backend: SamViTBackend) -> torch.Tensor:
    """``[n,H,W]`` bool -> ``[n,S,S]`` bool: resized as the image (longest side), zero padded."""
    spec = backend.info.image
    h, w = spec.resized_size(*masks.shape[1:])
    resized = F.interpolate(
        torch.from_numpy(masks).float()[:, None], (h, w), mode="bilinear", align_corners=False
    )
    return F.pad(resized[:, 0] > 0.5, (0, spec.size - w, 0, spec.size - h))


def sample_points(masks: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One pixel ``(x, y)`` drawn uniformly from each ``[S,S]`` mask (the centre of the frame for an
    empty one) -> ``[N,1,2]``."""
    points = []
    for mask in masks:
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(ys) == 0:
            points.append([mask.shape[1] / 2, mask.shape[0] / 2])
            continue
        k = int(torch.randint(len(ys), (1,), generator=gen))
        points.append([float(xs[k]), float(ys[k])])
    return torch.tensor(points)[:, None]


def jittered_boxes(masks: torch.Tensor, gen: torch.Generator, scale: float) -> torch.Tensor:
    """Bounding boxes of ``[N,S,S]`` masks, each corner moved by noise of 10% of the box side, at most
    ``20 * scale`` px (``scale``: input / original size) -> ``[N,4]``."""
    boxes = []
    for mask in masks:
        ys, xs = torch.nonzero(mask, as_tuple=True)
        box = torch.tensor([xs.min(), ys.min(), xs.max(), ys.max()], dtype=torch.float32)
        side = torch.stack([box[2] - box[0], box[3] - box[1]]).repeat(2)
        noise = (torch.randn(4, generator=gen) * 0.1 * side).clamp(-20 * scale, 20 * scale)
        boxes.append(box + noise)
    return torch.stack(boxes)


def correction_points(
    logits: torch.Tensor, targets: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A click in the error of each mask: ``[N,1,2]`` points, ``[N,1]`` labels (1 = missed
    foreground, 0 = spurious; a mask without error gets a foreground click inside the object)."""
    pred = logits > 0
    error = pred ^ targets
    points, labels = [], []
    for err, target in zip(error, targets, strict=True):
        region = err if err.any() else target
        ys, xs = torch.nonzero(region, as_tuple=True)
        k = int(torch.randint(len(ys), (1,), generator=gen))
        points.append([float(xs[k]), float(ys[k])])
        labels.append(int(target[ys[k], xs[k]]))
    return torch.tensor(points)[:, None], torch.tensor(labels)[:, None]


def decode_all_tokens(
    backend: SamViTBackend, embeddings: torch.Tensor, prompts: Prompts, mask_input: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All four mask tokens: low-res logits ``[N,4,s,s]``, the same at the input size ``[N,4,S,S]``,
    and predicted IoUs ``[N,4]``."""
    sam = backend.sam
    points = None if prompts.coords is None else (prompts.coords, prompts.labels)
    sparse, dense = sam.prompt_encoder(points=points, boxes=prompts.boxes, masks=mask_input)
    n = len(prompts.image_index)
    dense = dense.expand(n, -1, -1, -1)
    low_res, iou = backend.predict_masks(embeddings[prompts.image_index], sparse, dense)
    size = backend.info.image.size
    return low_res, F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False), iou


def mask_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Focal (gamma 2, alpha 0.25) x 20 + dice per mask: ``[N,M,S,S]`` logits vs ``[N,S,S]`` -> ``[N,M]``."""
    t = targets[:, None].float().expand_as(logits)
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    focal = (ce * (1 - p_t) ** 2 * (0.25 * t + 0.75 * (1 - t))).flatten(2).mean(-1)
    return FOCAL_WEIGHT * focal + DICE_WEIGHT * dice(logits.flatten(0, 1), t.flatten(0, 1)).view_as(focal)


def true_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of each of ``[N,M,S,S]`` masks (logits > 0) with its non-empty ``[N,S,S]`` target -> ``[N,M]``."""
    t = targets[:, None].expand_as(logits)
    return mask_iou_stats(logits.flatten(0, 1) > 0, t.flatten(0, 1))[2].float().view(logits.shape[:2])


def round_loss(
    logits: torch.Tensor, iou: torch.Tensor, targets: torch.Tensor, multimask: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss of one round and the chosen output per prompt (``[N]`` token index)."""
    tokens = slice(1, 4) if multimask else slice(0, 1)
    losses = mask_loss(logits[:, tokens], targets)
    best = losses.argmin(1)
    chosen = losses.gather(1, best[:, None])[:, 0]
    iou_loss = F.mse_loss(iou[:, tokens], true_iou(logits[:, tokens].detach(), targets), reduction="none")
    return (chosen + IOU_WEIGHT * iou_loss.mean(1)).mean(), best + tokens.start


def scene_batch(
    dataset: ShapesDataset, indices: list[int], backend: SamViTBackend
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixels ``[B,3,S,S]``, targets ``[N,S,S]``, ``image_index [N]`` and the per-image scale."""
    scenes = [dataset.scene(i) for i in indices]
    pixels = torch.stack([backend.info.image(s.image) for s in scenes])
    targets = [input_frame_masks(s.masks, backend) for s in scenes]
    index = torch.cat([torch.full((len(t),), i) for i, t in enumerate(targets)])
    scale = torch.tensor([backend.info.image.size / max(s.image.shape[:2]) for s in scenes])
    return pixels, torch.cat(targets), index, scale


def training_step(
    backend: SamViTBackend, dataset: ShapesDataset, indices: list[int], gen: torch.Generator, corrections: int
) -> torch.Tensor:
    """The loss of one batch of scenes: every object prompted (point or jittered box), then
    ``corrections`` rounds of corrective clicks with the previous mask as the mask prompt."""
    pixels, targets, index, scale = scene_batch(dataset, indices, backend)
    keep = targets.flatten(1).any(1)  # an object shrunk below a pixel at 128 px has no target
    targets, index = targets[keep], index[keep]
    embeddings = backend.sam.image_encoder(pixels)
    with_box = torch.rand(len(index), generator=gen) < 0.5
    total = 0.0
    for use_box in (False, True):
        rows = torch.nonzero(with_box == use_box)[:, 0]
        if len(rows) == 0:
            continue
        prompts = Prompts(index[rows], targets[rows])
        if use_box:
            prompts.boxes = jittered_boxes(prompts.targets, gen, float(scale.mean()))
        else:
            first = sample_points(prompts.targets, gen)
            prompts = prompts.add_points(first, torch.ones(len(rows), 1, dtype=torch.long))
        mask_input = None
        for round_ in range(corrections + 1):
            multimask = round_ == 0 and not use_box  # one point: ambiguous
            low_res, logits, iou = decode_all_tokens(backend, embeddings, prompts, mask_input)
            loss, best = round_loss(logits, iou, prompts.targets, multimask)
            total = total + loss / (corrections + 1)
            pick = best[:, None, None, None].expand(-1, 1, *low_res.shape[-2:])
            mask_input = low_res.gather(1, pick).detach()
            chosen = logits.gather(1, best[:, None, None, None].expand(-1, 1, *logits.shape[-2:]))[:, 0]
            prompts = prompts.add_points(*correction_points(chosen.detach(), prompts.targets, gen))
    return total


@torch.no_grad()
def evaluate(backend: SamViTBackend, dataset: ShapesDataset) -> dict[str, float]:
    """mIoU over every object of ``dataset`` at its original resolution, prompted by one point (the
    object's most interior pixel; the multimask output with the highest predicted IoU, as SAM's
    evaluation) or by its exact box (single-mask output)."""
    backend.eval()
    spec = backend.info.image
    ious: dict[str, list[float]] = {"point": [], "box": []}
    for i in range(len(dataset)):
        scene = dataset.scene(i)
        h, w = scene.image.shape[:2]
        embeddings = backend.sam.image_encoder(spec(scene.image)[None])
        for mask in scene.masks:
            distance = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
            y, x = np.unravel_index(distance.argmax(), mask.shape)
            ys, xs = np.nonzero(mask)
            corners = torch.tensor([[xs.min(), ys.min()], [xs.max(), ys.max()]], dtype=torch.float32)
            point = spec.transform_coords(torch.tensor([[[float(x), float(y)]]]), (h, w))
            zero = torch.zeros(1, dtype=torch.long)
            box = spec.transform_coords(corners, (h, w)).view(1, 4)
            for kind, prompts in (
                ("point", Prompts(zero, None, point, torch.ones(1, 1, dtype=torch.long))),
                ("box", Prompts(zero, None, boxes=box)),
            ):
                low_res, _, iou = decode_all_tokens(backend, embeddings, prompts, None)
                token = int(iou[0, 1:].argmax()) + 1 if kind == "point" else 0
                logits = backend.postprocess(low_res[:, token : token + 1], spec.resized_size(h, w), (h, w))
                ious[kind].append(float(mask_iou_stats(logits > 0, torch.from_numpy(mask)[None])[2]))
    return {f"{kind}_miou": float(np.mean(v)) for kind, v in ious.items()}


@dataclass
class PretrainReport:
    """What `pretrain_sam` did and reached."""

    steps: int
    seconds: float
    point_miou: float
    box_miou: float
    random_init_point_miou: float
    random_init_box_miou: float
    parameters: int
    file_bytes: int


def pretrain_sam(
    out: Path = SAM_TINY_SHAPES,
    steps: int = 4000,
    batch_size: int = 8,
    lr: float = 2e-3,
    warmup_steps: int = 200,
    corrections: int = 2,
    num_train: int = 4000,
    num_val: int = 50,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = True,
) -> PretrainReport:
    """Pretrain ``sam_tiny`` on shapes scenes with SAM's interactive objective and write its weights.

    Args:
        out: the weights file (segment-anything layout); a ``.json`` report is written beside it.
        steps: optimiser steps.
        batch_size: scenes per step (every object of each is prompted).
        lr: AdamW peak learning rate (linear warmup, then linear decay to 0).
        warmup_steps: warmup length.
        corrections: corrective-click rounds after the first prediction.
        num_train: training scenes (cycled in seeded permutations).
        num_val: validation scenes for the reported mIoU.
        seed: seed of the initialisation, the scenes and every prompt.
        threads: torch CPU threads (None: torch's default).
        progress: show a progress bar.
    """
    with deterministic_cpu(threads):
        return _pretrain(
            out, steps, batch_size, lr, warmup_steps, corrections, num_train, num_val, seed, progress
        )


def _pretrain(
    out: Path,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int,
    corrections: int,
    num_train: int,
    num_val: int,
    seed: int,
    progress: bool,
) -> PretrainReport:
    torch.manual_seed(seed)
    backend = create_backend("sam_tiny")
    train = ShapesDataset("train", num_train, seed)
    val = ShapesDataset("val", num_val, seed)
    baseline = evaluate(backend, val)
    optimizer = torch.optim.AdamW(backend.parameters(), lr=lr, weight_decay=0.01)
    schedule = lr_schedule(optimizer, OptimConfig(lr=lr, warmup_steps=warmup_steps), steps)
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    start = time.perf_counter()
    backend.train()
    bar = tqdm(range(steps), desc="pretrain sam_tiny", disable=not progress)
    for step in bar:
        if len(order) < batch_size:
            order += torch.randperm(num_train, generator=gen).tolist()
        indices, order = order[:batch_size], order[batch_size:]
        loss = training_step(backend, train, indices, gen, corrections)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    seconds = time.perf_counter() - start
    reached = evaluate(backend, val)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in backend.sam.state_dict().items()}, out)
    report = PretrainReport(
        steps=steps, seconds=round(seconds, 1),
        point_miou=reached["point_miou"], box_miou=reached["box_miou"],
        random_init_point_miou=baseline["point_miou"], random_init_box_miou=baseline["box_miou"],
        parameters=sum(p.numel() for p in backend.parameters()), file_bytes=out.stat().st_size,
    )  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    print(json.dumps(asdict(report), indent=2))
    return report


__all__ = ["PretrainReport", "evaluate", "pretrain_sam"]
