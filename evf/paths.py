"""The file paths a run keeps in its hyperparameters (tokenizer, part checkpoints, ``init_from``),
stored so that the checkpoint opens from any folder and on any machine.

* A file shipped in ``evf/assets`` is stored as ``evf/assets/<name>`` and resolved through the
  installed package wherever the run is opened (a file of that name under the working directory,
  e.g. in the repository root, is used first).
* Any other path is stored absolute.
* A path that does not exist when the model is built is a `CheckpointError` naming the key, the
  path and the working directory: one line on the command line.
"""

from __future__ import annotations

from pathlib import Path

from evf.assets import ASSETS
from evf.checkpoint import CheckpointError

PACKAGE_PREFIX = "evf/assets/"
PATH_KEYS = ("tokenizer", "encoder_checkpoint", "backend_checkpoint", "init_from")
"""`EVFSAMModule` arguments that are paths."""


def portable_path(path: str | Path | None) -> str | None:
    """How a run stores ``path`` (see the module doc); None stays None."""
    if path is None:
        return None
    given = Path(path).expanduser()
    absolute = given if given.is_absolute() else Path.cwd() / given
    if absolute.exists():
        absolute = absolute.resolve()
        try:
            return PACKAGE_PREFIX + absolute.relative_to(ASSETS.resolve()).as_posix()
        except ValueError:
            return str(absolute)
    if given.as_posix().startswith(PACKAGE_PREFIX):  # an asset named from another folder
        return given.as_posix()
    return str(absolute)


def resolve_path(path: str | Path | None, key: str) -> Path | None:
    """The file or directory a stored ``path`` names (see the module doc); None stays None.

    Raises:
        CheckpointError: it does not exist; the message names ``model.<key>``.
    """
    if path is None:
        return None
    given = Path(path).expanduser()
    if given.exists():
        return given
    if given.as_posix().startswith(PACKAGE_PREFIX):
        shipped = ASSETS / given.as_posix()[len(PACKAGE_PREFIX) :]
        if shipped.exists():
            return shipped
    raise CheckpointError(f"model.{key}: not found: {path} (working directory {Path.cwd()})")


__all__ = ["PACKAGE_PREFIX", "PATH_KEYS", "portable_path", "resolve_path"]
