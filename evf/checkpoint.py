"""The one weight loader: read -> unwrap -> remap (named format) -> strict load.

Every official format has a `CheckpointFormat`: an explicit rule table mapping each source key to a
target key or to "dropped on purpose". A key that matches no rule, a model key that nothing fills,
or a shape mismatch raises `CheckpointError` naming the file, the format and the first keys of each
kind. The only exceptions are the glob allow-lists declared next to each format.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]


class CheckpointError(RuntimeError):
    """A checkpoint does not fit the model: the message names the file, format and keys."""


@dataclass(frozen=True)
class Rule:
    """``pattern`` is a regex matched against the whole source key; ``target`` a ``re.sub``
    template, or None when the tensor is dropped on purpose (``reason`` says why)."""

    pattern: str
    target: str | None
    reason: str = ""


@dataclass(frozen=True)
class CheckpointFormat:
    """A named checkpoint layout.

    Attributes:
        name: e.g. ``unilm_beit3``, ``segment_anything``.
        rules: ordered rules; the first match wins.
        containers: keys that wrap the state dict in the file (tried in order).
        allow_missing: globs of *model* keys the file legitimately lacks; they keep their
            initialised values. Document each one where the format is declared.
    """

    name: str
    rules: tuple[Rule, ...]
    containers: tuple[str, ...] = ("model", "state_dict", "module")
    allow_missing: tuple[str, ...] = ()
    _compiled: tuple[tuple[re.Pattern[str], Rule], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", tuple((re.compile(r.pattern), r) for r in self.rules))

    def remap(self, state: Mapping[str, torch.Tensor], source: str = "<state dict>") -> StateDict:
        """Apply the rule table. Unmatched source keys raise; dropped keys are logged once."""
        out: StateDict = {}
        unmatched: list[str] = []
        dropped = 0
        for key, tensor in state.items():
            for regex, rule in self._compiled:
                if regex.fullmatch(key):
                    if rule.target is None:
                        dropped += 1
                    else:
                        out[regex.sub(rule.target, key)] = tensor
                    break
            else:
                unmatched.append(key)
        if unmatched:
            raise CheckpointError(
                f"{source}: {len(unmatched)} key(s) not known to format {self.name!r}: {_first(unmatched)}"
            )
        if dropped:
            log.info("%s: dropped %d tensor(s) on purpose (format %s)", source, dropped, self.name)
        return out


def prefix_rules(rules: Iterable[Rule], source: str = "", target: str = "") -> tuple[Rule, ...]:
    """The same rules for keys nested one level deeper: each source pattern now starts with the
    literal ``source`` prefix and each target with ``target`` (dropped rules stay dropped).

    Composes formats, e.g. SAM's rules under EVF-SAM's ``visual_model.`` loading into
    ``backend.sam.``. Group numbers are unchanged, so the targets' back-references still hold.
    """
    return tuple(
        Rule(
            re.escape(source) + f"(?:{r.pattern})",
            None if r.target is None else target.replace("\\", "\\\\") + r.target,
            r.reason,
        )
        for r in rules
    )


def read_state_dict(
    path: str | Path, containers: Iterable[str] = ("model", "state_dict", "module")
) -> StateDict:
    """Read a ``.safetensors`` file or a torch file with ``weights_only=True`` (no pickle code runs),
    then unwrap the first container key present and strip a DDP ``module.`` prefix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # corrupt file or one that needs arbitrary pickle code
            raise CheckpointError(
                f"{path}: cannot be read as a weights-only torch checkpoint: {err}"
            ) from err
    for key in containers:
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(state).__name__}")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def load_checkpoint(module: nn.Module, path: str | Path, fmt: CheckpointFormat) -> None:
    """Read ``path``, remap it with ``fmt`` and load it into ``module`` strictly."""
    state = fmt.remap(read_state_dict(path, fmt.containers), source=str(path))
    load_strict(module, state, fmt, source=str(path))


def load_strict(
    module: nn.Module, state: Mapping[str, torch.Tensor], fmt: CheckpointFormat, source: str
) -> None:
    """Strict load with the format's allow-list of missing keys; errors name the keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    not_allowed = [k for k in missing if not any(fnmatch.fnmatchcase(k, p) for p in fmt.allow_missing)]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    problems = []
    if not_allowed:
        problems.append(f"missing {len(not_allowed)} key(s): {_first(not_allowed)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {_first(unexpected)}")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} shape mismatch(es): {_first(wrong_shape)}")
    if problems:
        raise CheckpointError(f"{source} (format {fmt.name!r}): " + "; ".join(problems))
    full = dict(state)
    for key in missing:  # only allow-listed keys remain: they keep their initialised values
        full[key] = own[key]
    if missing:
        log.info(
            "%s: %d allow-listed key(s) absent, kept as initialised: %s",
            source,
            len(missing),
            _first(missing),
        )
    module.load_state_dict(full, strict=True)


def _first(keys: list[str], n: int = 5) -> str:
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more
