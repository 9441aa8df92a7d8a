"""The ``evf`` command: LightningCLI ``fit / validate / test / predict`` plus extra tools.

    evf fit --config configs/quickstart.yaml
    evf predict --ckpt_path RUN.ckpt --image IMG --prompt "the red circle" --prompt "..." --output DIR
    evf <tool> --help          # extra tools, listed by `evf --help`
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from evf.datamodules import EVFDataModule
from evf.datamodules.predict import MaskWriter, PredictDataModule
from evf.module import EVFSAMModule

# Extra tools: name -> (module:function, one-line help). Each is a typed function run by jsonargparse.
TOOLS: dict[str, tuple[str, str]] = {}

SUBCOMMAND_HELP = "subcommands: fit, validate, test, predict (LightningCLI; `evf SUBCOMMAND --help`)"


class EVFCLI(LightningCLI):
    """LightningCLI with EVF's links and defaults.

    * ``model.encoder`` / ``model.tokenizer`` / ``model.backend`` are linked into the datamodule,
      so batches are prepared for the configured encoder and backend.
    * Data defaults to the embedded synthetic shapes dataset.
    * Our datamodules shard data across processes themselves (no padded duplicates in
      evaluation), so Lightning's sampler replacement is off.
    * ``predict`` takes ``--image`` (file or folder, repeatable), ``--prompt`` (repeatable) and
      ``--output``.
    """

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs) -> None:
        super().__init__(
            EVFSAMModule,
            EVFDataModule,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            trainer_defaults={"use_distributed_sampler": False},
            parser_kwargs={"epilog": tools_epilog()},
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"data": {"class_path": "evf.datamodules.ShapesDataModule"}})
        for key in ("encoder", "tokenizer", "backend"):
            parser.link_arguments(f"model.{key}", f"data.init_args.{key}", apply_on="parse")

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            group = parser.add_argument_group("Prompted images")
            group.add_argument("--image", action="append", help="Image file or folder (repeatable).")
            group.add_argument("--prompt", action="append", help="Referring expression (repeatable).")
            group.add_argument("--output", default="predictions", help="Folder for mask and overlay PNGs.")
        return parser

    def predict(self, model: EVFSAMModule, datamodule=None, **kwargs) -> None:
        """With ``--image``: segment every prompt in every image and write PNGs to ``--output``."""
        cfg = self.config_init["predict"]
        if not cfg.get("image"):
            self.trainer.predict(model, datamodule=datamodule, **kwargs)
            return
        hp = model.hparams
        data = PredictDataModule(cfg["image"], cfg["prompt"] or [], hp.encoder, hp.backend, hp.tokenizer)
        self.trainer.callbacks.append(MaskWriter(cfg["output"]))
        kwargs["return_predictions"] = False
        self.trainer.predict(model, datamodule=data, **kwargs)


def tools_epilog() -> str:
    lines = [SUBCOMMAND_HELP, "extra tools:"]
    lines += [f"  evf {name:<20} {help_}" for name, (_, help_) in TOOLS.items()] or ["  (none)"]
    return "\n".join(lines)


def _load_tool(target: str) -> Callable:
    module, func = target.split(":")
    return getattr(__import__(module, fromlist=[func]), func)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in TOOLS:
        from jsonargparse import auto_cli

        auto_cli(_load_tool(TOOLS[argv[0]][0]), args=argv[1:])
        return
    EVFCLI(args=argv)


if __name__ == "__main__":
    main()
