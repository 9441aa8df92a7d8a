"""``evf demo``: load a model (`load_model`) and serve the page of `evf.demo.app`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from evf.checkpoint import CheckpointError
from evf.model import EVFSAM


def load_model(
    ckpt_path: Path | None = None,
    pretrained: Path | None = None,
    backend_checkpoint: Path | None = None,
    device: str = "cpu",
) -> tuple[EVFSAM, str]:
    """The model of a training run (``ckpt_path``) or of a released / exported directory
    (``pretrained``, `evf.load_pretrained`), in eval mode on ``device``, and a title naming it.

    Raises:
        CheckpointError: neither or both given, or a path that does not exist.
    """
    if (ckpt_path is None) == (pretrained is None):
        raise CheckpointError("give either --ckpt_path RUN.ckpt or --pretrained DIR (one of them)")
    if ckpt_path is not None:
        from evf.module import EVFSAMModule  # deferred: Lightning is only needed for a run's checkpoint

        if not Path(ckpt_path).is_file():
            raise CheckpointError(f"--ckpt_path {ckpt_path}: no such file")
        module = EVFSAMModule.load_for_inference(ckpt_path, backend_checkpoint, map_location=device)
        hp = module.hparams
        return module.model.eval(), f"EVF-SAM demo: {Path(ckpt_path).name} ({hp.encoder} + {hp.backend})"
    from evf.pretrained import ReleaseConfig, load_pretrained

    if not Path(pretrained).is_dir():
        raise CheckpointError(f"--pretrained {pretrained}: no such directory")
    config = ReleaseConfig.read(pretrained)
    model = load_pretrained(pretrained, device=device)
    return model, f"EVF-SAM demo: {Path(pretrained).name} ({config.encoder} + {config.backend})"


def demo(
    *,
    ckpt_path: Path | None = None,
    pretrained: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str | None = None,
    backend_checkpoint: Path | None = None,
    threshold: float = 0.0,
    precision: Literal["fp32", "bf16"] = "fp32",
) -> None:
    """Serve a web page that segments uploaded images with a trained or released EVF-SAM model.

    Args:
        ckpt_path: our Lightning checkpoint of a training run.
        pretrained: a released or exported EVF-SAM directory (config.json, weights, tokenizer).
        host: the address to listen on (0.0.0.0 serves other machines too).
        port: the port to listen on.
        device: where the model runs (default: cuda when available, else cpu).
        backend_checkpoint: for a run trained from an embedding cache, the SAM weights the cache
            was built from (its checkpoint holds no SAM image encoder).
        threshold: logit threshold of the masks.
        precision: ``bf16`` computes under autocast (on a CPU with AVX-512 BF16, faster; masks
            agree with fp32 as benchmarks/deploy.md measures).
    """
    try:
        from evf.demo.app import build_app
    except ImportError as err:
        raise SystemExit(f"evf: error: evf demo needs gradio ({err}): pip install 'evf[demo]'") from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, title = load_model(ckpt_path, pretrained, backend_checkpoint, device)
    dtype = torch.bfloat16 if precision == "bf16" else None
    build_app(model, title, threshold, dtype).launch(server_name=host, server_port=port)


__all__ = ["demo", "load_model"]
