"""``evf pretrain-encoder``: pretrain a multimodal encoder on image-caption pairs with its family's
own objective, as the paper's BEIT-3 arrives pretrained on image-text data before EVF-SAM fine-tunes it.

    evf pretrain-encoder --encoder beit3_tiny                      # shapes captions -> evf/assets
    evf pretrain-encoder --encoder clip_tiny --steps 2000
    evf pretrain-encoder --encoder beit3_tiny --captions my/captions.jsonl --out my_beit3.pth
    evf pretrain-encoder --encoder beit3_tiny --captions captions_train2017.json --images train2017/

Objectives (`evf.encoders.pretraining`): BEIT-3 masked data modelling, CLIP's symmetric contrastive
loss, ViLT's image-text matching + masked language modelling. Data (`evf.datamodules.captions`):
shapes scenes with generated captions (a scene stream of its own: no scene the task trains or
validates on, and no mask, box or referring expression), a JSONL of ``{"image", "caption"}``, or
COCO captions. Nothing here reads a mask.

Seeded and resumable: every draw of step ``s`` (which images, which caption, which words are
masked, which negatives) comes from generators seeded by ``(seed, s)``; the weights, optimiser and
schedule are saved every ``save_every`` steps to ``<out>.resume.pt``, and a rerun of the same
command continues from there (bit-identically) and deletes it at the end. At the end a probe runs
on held-out pairs, for the random-init encoder and the pretrained one: masked colour- and shape-word
accuracy on shapes (the word masked in "there is a red circle in the top left", chosen among the
four colours / three shapes), and two that need the described object found in the image: the colour
among the scene's own colours and the place word ("top" or "bottom", "left" or "right"); masked-word
accuracy, image-text retrieval R@1 (CLIP) and matching
accuracy (ViLT). The weights go to ``out`` in the family's checkpoint format and a JSON card beside
them says what was done, what it reached and the command that remakes the file.
"""

from __future__ import annotations

import json
import logging
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from evf.assets import ASSETS
from evf.encoders import ENCODERS
from evf.encoders.pretraining import OBJECTIVES, build_objective
from evf.errors import UsageError
from evf.optim import OptimConfig, lr_schedule
from evf.tools.pretrain_data import CaptionBatcher, caption_sources, describe_source, probe
from evf.tools.seeding import deterministic_cpu

log = logging.getLogger(__name__)

_MASK_STREAM = 0x3A5C
DEFAULT_OUT = {"beit3": "{name}_shapes.pth", "clip": "{name}_shapes.pt", "vilt": "{name}_shapes"}


@dataclass
class PretrainEncoderReport:
    """What `pretrain_encoder` did and reached (the JSON card beside the weights)."""

    encoder: str
    encoder_kwargs: dict[str, Any]
    objective_kwargs: dict[str, Any]
    objective: str
    data: str
    steps: int
    batch_size: int
    lr: float
    seed: int
    seconds: float
    probe: dict[str, float]
    random_init_probe: dict[str, float]
    parameters: int
    file: str
    file_bytes: int
    command: str
    machine: str = field(default_factory=lambda: f"{platform.machine()}, torch {torch.__version__}")


def pretrain_encoder(
    encoder: str = "beit3_tiny",
    out: Path | None = None,
    captions: Path | None = None,
    images: Path | None = None,
    tokenizer: Path | None = None,
    encoder_kwargs: dict[str, Any] | None = None,
    objective_kwargs: dict[str, Any] | None = None,
    steps: int = 3000,
    batch_size: int = 48,
    lr: float = 1e-3,
    warmup_steps: int = 200,
    weight_decay: float = 0.05,
    num_train: int = 8000,
    num_probe: int = 100,
    max_sentences: int = 2,
    scene_objects: tuple[int, int] = (3, 5),
    seed: int = 0,
    save_every: int = 250,
    stop_after: int | None = None,
    threads: int | None = None,
    progress: bool = True,
) -> PretrainEncoderReport | None:
    """Pretrain ``encoder`` on image-caption pairs with its family's objective and write its weights.

    Args:
        encoder: a registered encoder name (``beit3_tiny``, ``clip_tiny``, ``vilt_tiny``, or a full size).
        out: the weights (BEIT-3: unilm ``.pth``; CLIP: open_clip state dict; ViLT: a transformers
            directory with its ``vocab.txt``); a ``.json`` card is written beside it. Default:
            ``evf/assets/<encoder>_shapes.*`` for shapes captions.
        captions: a ``.jsonl`` of ``{"image", "caption"}`` lines or COCO ``captions_*.json``; None:
            shapes scenes with generated captions.
        images: with COCO captions, the folder of their images.
        tokenizer: the encoder's tokenizer (None: its default; ViLT on shapes: the shapes WordPiece
            vocabulary, written into ``out``).
        encoder_kwargs: architecture arguments of the encoder's factory, e.g. ``{"sub_ln": false,
            "position_init": "sincos"}`` for the shipped ``beit3_tiny``; recorded in the card, and
            a fine-tuning config passes the same ones as ``model.encoder_kwargs``.
        objective_kwargs: arguments of the family's objective, recorded in the card; BEIT-3:
            ``mask_rate``, ``patch_mask_rate``, ``always_masked`` (words masked wherever they occur,
            e.g. ``{"mask_rate": 0.15, "always_masked": ["top", "bottom", "left", "right"]}`` for the
            shipped ``beit3_tiny``); ViLT: ``mask_rate``, ``swap_rate``.
        steps: optimiser steps.
        batch_size: image-caption pairs per step.
        lr: AdamW peak learning rate (linear warmup, then linear decay to 0).
        warmup_steps: warmup length.
        weight_decay: AdamW weight decay.
        num_train: shapes scenes to pretrain on (ignored for files).
        num_probe: held-out pairs for the probe (files: at most a fifth, taken from the end).
        max_sentences: most sentences in a generated shapes caption.
        scene_objects: inclusive range of objects in a training shapes scene (the probe's scenes
            hold 3-5, as the task's).
        seed: seed of the initialisation and of every draw.
        save_every: steps between resumable states (``<out>.resume.pt``).
        stop_after: stop after this many steps of this run, leaving the resumable state (a time slice).
        threads: torch CPU threads (None: torch's default).
        progress: show a progress bar.

    Returns:
        The report, or None when the run stopped early (``stop_after``).
    """
    if encoder not in ENCODERS.names():
        raise UsageError(f"--encoder {encoder!r} is not a registered encoder: {', '.join(ENCODERS.names())}")
    family = ENCODERS.info(encoder).family
    if family not in OBJECTIVES:
        raise UsageError(f"--encoder {encoder!r}: no pretraining objective for family {family!r}")
    if out is None:
        if captions is not None:
            raise UsageError("--out is required with --captions (the default is the shipped shapes asset)")
        out = ASSETS / DEFAULT_OUT.get(family, "{name}_shapes.pt").format(name=encoder)
    out = Path(out)
    with deterministic_cpu(threads):
        return _pretrain(
            encoder, encoder_kwargs or {}, objective_kwargs or {}, family, out, captions, images,
            tokenizer, steps, batch_size, lr, warmup_steps, weight_decay, num_train, num_probe,
            max_sentences, scene_objects, seed, save_every, stop_after, progress,
        )  # fmt: skip


def _tokenizer_for(family: str, out: Path, tokenizer: Path | None, captions: Path | None) -> Path | None:
    """ViLT on shapes reads the shapes WordPiece vocabulary, written into its output directory."""
    if family != "vilt" or tokenizer is not None or captions is not None:
        return tokenizer
    from evf.datamodules.shapes.tokenizer import write_shapes_wordpiece

    out.mkdir(parents=True, exist_ok=True)
    write_shapes_wordpiece(out)
    return out


def _pretrain(
    encoder: str, encoder_kwargs: dict[str, Any], objective_kwargs: dict[str, Any], family: str, out: Path,
    captions: Path | None, images: Path | None, tokenizer: Path | None, steps: int, batch_size: int,
    lr: float, warmup_steps: int, weight_decay: float, num_train: int, num_probe: int, max_sentences: int,
    scene_objects: tuple[int, int], seed: int, save_every: int, stop_after: int | None, progress: bool,
) -> PretrainEncoderReport | None:  # fmt: skip
    tokenizer = _tokenizer_for(family, out, tokenizer, captions)
    train_source, probe_source, train_indices, probe_indices = caption_sources(
        captions, images, num_train, num_probe, seed, max_sentences, scene_objects
    )
    torch.manual_seed(seed)
    try:
        objective = build_objective(
            encoder, tokenizer, encoder_kwargs=encoder_kwargs, objective_kwargs=objective_kwargs
        )
    except TypeError as error:  # an argument the encoder's factory or the objective does not take
        raise UsageError(f"--encoder_kwargs / --objective_kwargs: {error}") from None
    except ValueError as error:  # e.g. an always-masked word the tokenizer splits
        raise UsageError(f"--objective_kwargs: {error}") from None
    batcher = CaptionBatcher(objective, train_source, train_indices, seed)
    probe_batcher = CaptionBatcher(objective, probe_source, probe_indices, seed + 1)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = lr_schedule(optimizer, OptimConfig(lr=lr, warmup_steps=warmup_steps), steps)
    state_file = out.parent / f"{out.name}.resume.pt"
    start, seconds, baseline = 0, 0.0, None
    if state_file.is_file():
        state = torch.load(state_file, map_location="cpu", weights_only=False)
        objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start, seconds, baseline = state["step"], state["seconds"], state["random_init_probe"]
        print(f"resuming {encoder} pretraining from step {start} ({state_file})", file=sys.stderr)
    if baseline is None:
        baseline = probe(objective, probe_batcher) if probe_indices else {}
    objective.train()
    began = time.perf_counter()
    last = steps if stop_after is None else min(steps, start + stop_after)
    bar = tqdm(
        range(start, last), desc=f"pretrain {encoder}", initial=start, total=steps, disable=not progress
    )
    for step in bar:
        torch.manual_seed(seed * 1_000_003 + step)  # ViLT's patch sampling draws from the global RNG
        batch = batcher.batch(batcher.indices_of_step(step, batch_size), step)
        terms = objective(batch, torch.Generator().manual_seed(seed * 1_000_003 + _MASK_STREAM + step))
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        schedule.step()
        if step % 20 == 0:
            bar.set_postfix({k: f"{float(v.detach()):.3f}" for k, v in terms.items()})
        done = step + 1
        if done % save_every == 0 or done == last:
            _save_state(
                state_file,
                objective,
                optimizer,
                schedule,
                done,
                seconds + time.perf_counter() - began,
                baseline,
            )
    seconds += time.perf_counter() - began
    if last < steps:
        print(f"stopped at step {last} of {steps}; rerun the same command to continue", file=sys.stderr)
        return None
    reached = probe(objective, probe_batcher) if probe_indices else {}
    out.parent.mkdir(parents=True, exist_ok=True)
    written = objective.save(out)
    report = PretrainEncoderReport(
        encoder=encoder, encoder_kwargs=encoder_kwargs, objective_kwargs=objective_kwargs,
        objective=objective.description(),
        data=describe_source(train_source, len(train_indices)),
        steps=steps, batch_size=batch_size, lr=lr, seed=seed, seconds=round(seconds, 1), probe=reached,
        random_init_probe=baseline, parameters=sum(p.numel() for p in objective.encoder.parameters()),
        file=written.name, file_bytes=_size(written), command=_command(),
    )  # fmt: skip
    card = out.parent / f"{out.stem if out.suffix else out.name}.json"
    card.write_text(json.dumps(asdict(report), indent=2) + "\n")
    state_file.unlink(missing_ok=True)
    print(json.dumps({"probe": reached, "random_init_probe": baseline, "seconds": report.seconds}, indent=2))
    return report


def _save_state(path: Path, objective, optimizer, schedule, step: int, seconds: float, baseline) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "objective": objective.state_dict(), "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(), "step": step, "seconds": seconds, "random_init_probe": baseline,
    }  # fmt: skip
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # a run killed while saving keeps the previous state


def _size(path: Path) -> int:
    return (
        path.stat().st_size
        if path.is_file()
        else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    )


def _command() -> str:
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv and sys.argv[0] else ["evf"]
    return shlex.join(argv)


__all__ = ["PretrainEncoderReport", "probe", "pretrain_encoder"]
