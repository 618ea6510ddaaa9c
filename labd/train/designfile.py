"""Design files: a network design (``labd.train.arch.Arch``) as TOML, read and written.

Format (``labd train --design FILE.toml``; every run writes the design it used as
``design.toml`` in its run folder, complete, so that ``--design RUN/design.toml`` repeats it):

    # any comments
    [design]
    depth = 1
    units = 4
    hybrid = true
    readout = "linear"        # or "groups"
    epochs = 120
    batch_size = 32
    lr = 0.02                 # physical parameters (theta)
    lr_digital = 0.01         # digital parameters
    twin_hidden = [256, 256]
    twin_family = "auto"      # or "mlp", "residual"
    ...

Keys are ``Arch``'s fields (``FIELDS``); a file may give only some of them: the others come
from the design the run would have used without the file (the task's hand-made design, or
the one chosen for the data set). An unknown key or a value of the wrong type is a
``DesignError`` naming the key and what it takes.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path
from typing import Any

from labd.train.arch import Arch

FIELDS: dict[str, Any] = {f.name: f for f in dataclasses.fields(Arch)}
_HINTS = typing.get_type_hints(Arch)


class DesignError(Exception):
    """A design file or design option that cannot be used."""


def _check(key: str, value: Any) -> Any:
    """``value`` converted to the type of ``Arch.key``, or ``DesignError``."""
    hint = _HINTS[key]
    origin = typing.get_origin(hint)
    if key == "twin_family":
        if value in ("auto", None):
            return None
        choices: tuple[Any, ...] = ("mlp", "residual")
    elif origin is typing.Literal:
        choices = typing.get_args(hint)
    else:
        choices = ()
    if choices:
        if value not in choices:
            raise DesignError(f"design key {key!r} must be one of {list(choices)}, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise DesignError(f"design key {key!r} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DesignError(f"design key {key!r} must be a whole number >= 0, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise DesignError(f"design key {key!r} must be a number >= 0, got {value!r}")
        return float(value)
    if origin is tuple:  # twin_hidden
        if not (isinstance(value, list | tuple) and value
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                        for v in value)):
            raise DesignError(f"design key {key!r} must be a list of positive whole numbers, "
                              f"got {value!r}")
        return tuple(value)
    raise DesignError(f"design key {key!r} cannot be set")  # pragma: no cover


def apply(base: Arch, values: dict[str, Any], source: str = "design") -> Arch:
    """``base`` with ``values`` (checked; ``None`` values ignored)."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise DesignError(f"{source}: unknown design key(s) {unknown}; known: "
                          f"{sorted(FIELDS)}")
    changes = {k: _check(k, v) for k, v in values.items() if v is not None}
    arch = dataclasses.replace(base, **changes)
    validate(arch)
    return arch


def validate(arch: Arch) -> None:
    """The design's values that no type check catches."""
    if arch.depth < 1 or arch.units < 1 or arch.batch_size < 1 or arch.epochs < 1:
        raise DesignError("depth, units, batch_size and epochs must be at least 1")
    if not 0 <= arch.val_fraction < 1:
        raise DesignError(f"val_fraction must be in [0, 1), got {arch.val_fraction}")
    if arch.patience and not arch.val_fraction:
        raise DesignError("patience (early stopping) needs a validation split: set "
                          "val_fraction > 0")


def read(path: str | Path) -> dict[str, Any]:
    """The ``[design]`` table of a design file (values unchecked; see ``apply``)."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as exc:
        raise DesignError(f"cannot read design file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DesignError(f"{path} is not valid TOML: {exc}") from None
    table = doc.get("design")
    if not isinstance(table, dict):
        raise DesignError(f"{path}: needs a [design] table (see `labd train --help`)")
    return table


def load(path: str | Path, base: Arch) -> Arch:
    """``base`` with the values of the design file ``path``."""
    return apply(base, read(path), str(path))


def _toml(value: Any) -> str:
    if value is None:
        return '"auto"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def dumps(arch: Arch, comment: str = "") -> str:
    """The complete design as TOML text (``comment`` lines first, as ``#`` comments)."""
    lines = [f"# {line}".rstrip() for line in comment.splitlines()]
    lines.append("[design]")
    lines += [f"{key} = {_toml(value)}" for key, value in arch.to_dict().items()]
    return "\n".join(lines) + "\n"


def save(path: str | Path, arch: Arch, comment: str = "") -> Path:
    """Write ``dumps(arch, comment)`` to ``path``; returns the path."""
    path = Path(path)
    path.write_text(dumps(arch, comment))
    return path
