"""``python -m evf.datamodules.shapes``: write the shapes dataset in REFER layout, or its tokenizer."""

from __future__ import annotations

import argparse
from pathlib import Path

from .refer_writer import write_refer
from .tokenizer import train_shapes_tokenizer


def main(argv: list[str] | None = None) -> None:
    """Parses the command line and runs the requested writer(s)."""
    parser = argparse.ArgumentParser(prog="python -m evf.datamodules.shapes", description=__doc__)
    parser.add_argument("--write-refer", type=Path, metavar="DIR", help="REFER data_root to write into")
    parser.add_argument("--write-tokenizer", type=Path, metavar="PATH", help="sentencepiece .model to write")
    parser.add_argument("--train", type=int, default=1000, help="training scenes (default: 1000)")
    parser.add_argument("--val", type=int, default=100, help="validation scenes (default: 100)")
    parser.add_argument("--test", type=int, default=100, help="test scenes (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default: 0)")
    args = parser.parse_args(argv)
    if args.write_refer is None and args.write_tokenizer is None:
        parser.error("nothing to do: give --write-refer DIR and/or --write-tokenizer PATH")
    if args.write_refer is not None:
        counts = {"train": args.train, "val": args.val, "test": args.test}
        data_dir = write_refer(args.write_refer, counts, seed=args.seed)
        print(f"wrote {counts} scenes to {data_dir} (images in {args.write_refer / 'images'})")
    if args.write_tokenizer is not None:
        pieces = train_shapes_tokenizer(args.write_tokenizer)
        print(f"wrote {args.write_tokenizer} ({pieces} pieces)")


if __name__ == "__main__":
    main()
