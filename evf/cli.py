"""The ``evf`` command: LightningCLI ``fit / validate / test / predict`` plus extra tools.

evf fit --config configs/quickstart.yaml
evf predict --ckpt_path RUN.ckpt --image IMG --prompt "the red circle" --prompt "..." --output DIR
evf predict --ckpt_path RUN.ckpt --image IMG --prompt "the dog" --box 10,20,200,180 --output DIR
evf predict --ckpt_path RUN.ckpt --image IMG --point 50,60 --point 90,40,0 --output DIR  # no text
evf predict --ckpt_path RUN.ckpt --manifest prompts.csv --output DIR   # each image its own prompts
evf <tool> --help          # extra tools, listed by `evf --help`
"""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Callable

from jsonargparse import DefaultHelpFormatter
from jsonargparse.typing import ClosedUnitInterval, PositiveInt
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from evf.cache import CacheError
from evf.checkpoint import CheckpointError
from evf.datamodules import DataError, EVFDataModule
from evf.datamodules.predict import MaskWriter, PredictDataModule
from evf.errors import UsageError
from evf.inputs import collect_inputs
from evf.io import ImageReadError
from evf.lightning_compat import SubcommandArgumentsCLI
from evf.module import EVFSAMModule
from evf.paths import PATH_KEYS
from evf.run_summary import RunSummary
from evf.video.errors import VideoError

# Extra tools: name -> (module:function, one-line help). Each is a typed function run by jsonargparse,
# or an `EVFCLI` subclass (a tool that reads training configs: `--config FILE` plus its own options).
TOOLS: dict[str, tuple[str, str]] = {
    "sweep": ("evf.sweep.commands:sweep", "train and evaluate a grid of configs (--grid FILE)"),
    "sweep-report": ("evf.sweep.commands:sweep_report", "the table of a sweep directory (DIR)"),
    "describe": ("evf.tools.describe:describe", "parameter counts per part (meta device)"),
    "demo": ("evf.demo.cli:demo", "a Gradio page: upload an image, type expressions, see masks (evf[demo])"),
    "annotate-objects365": ("evf.tools.annotate_objects365:main", "SAM masks for Objects365 boxes"),
    "cache-embeddings": ("evf.tools.cache_embeddings:CacheEmbeddingsCLI", "SAM image features to disk"),
    "export": (
        "evf.tools.export:export",
        "a .ckpt in the released EVF-SAM layout, or ONNX graphs (--format onnx; --ckpt_path / --pretrained)",
    ),
    "pretrain-sam": ("evf.tools.pretrain_sam:pretrain_sam", "train sam_tiny on shapes with SAM's objective"),
    "pretrain-encoder": (
        "evf.tools.pretrain_encoder:pretrain_encoder",
        "pretrain an encoder on image-caption pairs with its family's objective",
    ),
    "data-check": (
        "evf.tools.data_check:DataCheckCLI",
        "read every sample of a data config; report (--config)",
    ),
    "predict-video": ("evf.tools.predict_video:predict_video", "text-prompted masks through a clip (SAM-2)"),
    "serve": ("evf.serve.server:serve", "HTTP JSON API on LitServe: POST /images, /segment; GET /health"),
}

SUBCOMMAND_HELP = "subcommands: fit, validate, test, predict (LightningCLI; `evf SUBCOMMAND --help`)"


class SaveFitConfig(SaveConfigCallback):
    """Saves the resolved config beside the logs of a fit only (validate/test/predict runs would
    otherwise drop a config.yaml into the working directory)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)


class EVFCLI(SubcommandArgumentsCLI):
    """LightningCLI with EVF's links and defaults.

    * ``model.encoder`` / ``model.tokenizer`` / ``model.backend`` are linked into the datamodule,
      so batches are prepared for the configured encoder and backend.
    * ``data.init_args.embedding_cache`` sets ``model.use_embedding_cache``: with a cache the model
      builds no SAM image encoder.
    * Data defaults to the embedded synthetic shapes dataset.
    * Our datamodules shard data across processes themselves (no padded duplicates in
      evaluation), so Lightning's sampler replacement is off.
    * Every fit prints a line per validation when no progress bar shows progress, and a summary at
      its end (`RunSummary`).
    * ``predict`` takes ``--image`` (file or folder, repeatable), ``--prompt`` (repeatable),
      ``--point x,y[,label]`` (repeatable) and ``--box x0,y0,x1,y1`` (joining every ``--prompt``,
      or a prompt of their own without one), ``--manifest`` and ``--output``.
    """

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs) -> None:
        super().__init__(
            EVFSAMModule,
            EVFDataModule,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            trainer_defaults={"use_distributed_sampler": False, "callbacks": [RunSummary()]},
            parser_kwargs={"epilog": tools_epilog(), "formatter_class": EpilogAsWrittenFormatter},
            save_config_callback=SaveFitConfig,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
            **kwargs,
        )

    explicit_model_keys = PATH_KEYS  # a path given now wins over the one the checkpoint stores

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"data": {"class_path": "evf.datamodules.ShapesDataModule"}})
        for key in ("encoder", "tokenizer", "backend"):
            parser.link_arguments(f"model.{key}", f"data.init_args.{key}", apply_on="parse")
        # A datamodule that reads an embedding cache makes the model skip its image encoder.
        parser.link_arguments(
            "data.init_args.embedding_cache", "model.use_embedding_cache", uses_cache, apply_on="parse"
        )

    def add_subcommand_arguments(self, parser: LightningArgumentParser, subcommand: str) -> None:
        if subcommand in ("validate", "test", "predict"):
            # A checkpoint's hyperparameters override --model.* (LightningCLI), so the threshold of a
            # trained model is set here.
            parser.add_argument(
                "--presence_threshold",
                type=ClosedUnitInterval | None,
                default=None,
                help="Presence probability under which a mask is empty (models with a presence head; "
                "default: the model's, 0.5).",
            )
        if subcommand == "predict":
            parser.set_defaults({"trainer.logger": False})  # writes only under --output (no lightning_logs/)
            group = parser.add_argument_group("Prompted images")
            group.add_argument("--image", action="append", help="Image file or folder (repeatable).")
            group.add_argument("--prompt", action="append", help="Expression for every --image (repeatable).")
            group.add_argument(
                "--point", action="append", help="x,y[,label] in image pixels (repeatable; label 1 fg, 0 bg)."
            )
            group.add_argument("--box", help="x0,y0,x1,y1 in image pixels.")
            group.add_argument("--manifest", help="JSON or CSV file mapping images to their own prompts.")
            group.add_argument("--output", default="predictions", help="Folder for the PNGs and JSON files.")
            group.add_argument("--batch_size", type=PositiveInt, default=1, help="Images per forward pass.")

    def _set_presence_threshold(self) -> None:
        value = self.config_init[self.subcommand].get("presence_threshold")
        if value is not None:
            self.model.presence_threshold = float(value)

    before_validate = before_test = before_predict = _set_presence_threshold

    def predict(self, model: EVFSAMModule, datamodule=None, **kwargs) -> None:
        """With ``--image`` / ``--manifest``: segment every prompt of every image and write PNGs, RLE
        masks and scores to ``--output``. Images that cannot be read are skipped and listed; the
        command then exits with status 1."""
        cfg = self.config_init["predict"]
        if not cfg.get("image") and not cfg.get("manifest"):
            self.trainer.predict(model, datamodule=datamodule, **kwargs)
            return
        try:
            items = collect_inputs(
                cfg.get("image") or [],
                cfg.get("prompt") or [],
                cfg.get("manifest"),
                cfg.get("point") or [],
                cfg.get("box"),
            )
        except (ValueError, OSError) as err:  # a malformed point, box or manifest: its message, no traceback
            print(f"evf predict: error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        hp = model.hparams
        data = PredictDataModule(items, hp.encoder, hp.backend, hp.tokenizer, batch_size=cfg["batch_size"])
        writer = MaskWriter(cfg["output"])
        self.trainer.callbacks.append(writer)
        kwargs["return_predictions"] = False
        self.trainer.predict(model, datamodule=data, **kwargs)
        if writer.writer.failures:
            print(writer.writer.summary(), file=sys.stderr)
            raise SystemExit(1)


class EpilogAsWrittenFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help, with the description and epilog (the tools table) kept line by line."""


def tools_epilog() -> str:
    lines = [SUBCOMMAND_HELP, "extra tools:"]
    lines += [f"  evf {name:<20} {help_}" for name, (_, help_) in TOOLS.items()] or ["  (none)"]
    return "\n".join(lines)


def uses_cache(embedding_cache: str | None) -> bool:
    return embedding_cache is not None


def tool_arguments(tool: Callable, argv: list[str]) -> list[str]:
    """A tool's command line as jsonargparse reads it: options may be spelt with hyphens
    (``--redetect-every`` for ``--redetect_every``), and list-typed options repeat
    (``--prompt a --prompt b``; jsonargparse appends with ``--prompt+ a`` and would read a repeated
    plain option as a whole JSON list)."""
    hints = typing.get_type_hints(tool)
    lists = {
        name
        for name, hint in hints.items()
        if list in (typing.get_origin(hint), *map(typing.get_origin, typing.get_args(hint)))
    }
    out = []
    for arg in argv:
        name, sep, value = arg.partition("=")
        key = name[2:].replace("-", "_") if name.startswith("--") else None
        if key in hints:
            name = f"--{key}+" if key in lists else f"--{key}"
            arg = f"{name}{sep}{value}"
        out.append(arg)
    return out


def _load_tool(target: str) -> Callable:
    module, func = target.split(":")
    return getattr(__import__(module, fromlist=[func]), func)


# Errors that describe the user's input (a file, a key, a store), each with a message naming it: the
# command line prints that message and exits 2, without a traceback (kept for bugs).
ANTICIPATED = (CacheError, CheckpointError, DataError, ImageReadError, UsageError, VideoError)


def one_line(err: Exception) -> str:
    """The error's message; for one re-raised from a DataLoader worker (whose message carries the
    worker's traceback), the original message only."""
    message = str(err)
    if "Original Traceback" not in message:
        return message
    last = message.strip().splitlines()[-1]
    return last.split(": ", 1)[1] if last.startswith(f"{type(err).__module__}.") and ": " in last else last


def main(argv: list[str] | None = None) -> None:
    try:
        _run(sys.argv[1:] if argv is None else argv)
    except ANTICIPATED as err:
        print(f"evf: error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(2) from None


def _run(argv: list[str]) -> None:
    if argv and argv[0] in TOOLS:
        from jsonargparse import auto_cli

        tool = _load_tool(TOOLS[argv[0]][0])
        if isinstance(tool, type) and issubclass(tool, LightningCLI):  # a tool that reads training configs
            tool(args=argv[1:])
        else:
            auto_cli(tool, args=tool_arguments(tool, argv[1:]))
        return
    EVFCLI(args=argv)


if __name__ == "__main__":
    main()
