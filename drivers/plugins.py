"""Where labd finds drivers, simulated benches and nominal physics models: entry points.

Every class a configuration can name is found the same way, labd's own included:

* a registered name, an entry point in one of the groups of ``GROUPS`` declared by an installed
  distribution's ``[project.entry-points."labd.drivers"]`` (etc.) table: labd's own
  ``pyproject.toml`` registers ``sim.dac``, ``shg``..., a lab's package registers its own;
* or a dotted path ``"package.module:Class"`` to any importable class (a lab's script folder put
  on ``sys.path``; see ``add_search_path``).

``load(group, name)`` returns the class or raises ``PluginError`` with a message that says what
to do: an unknown name lists the known ones; a plugin whose import fails names the entry point,
its distribution and the exception. ``check_class`` and ``check_call`` check a class against an
interface and a constructor call against its signature. ``survey()`` loads every entry point
for ``labd plugins``. Modules are imported only when named (or surveyed), so a back end's
libraries are imported only by configurations that use it.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata as metadata
import importlib.util
import inspect
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: What a configuration names -> its entry-point group.
GROUPS: dict[str, str] = {"driver": "labd.drivers", "bench": "labd.benches",
                          "physics": "labd.physics"}
#: How messages call each (singular, plural).
WORDS: dict[str, tuple[str, str]] = {"driver": ("driver", "drivers"),
                                     "bench": ("bench", "benches"),
                                     "physics": ("nominal model", "nominal models")}

_REINSTALL = ("(entry points are registered when a package is installed: after adding one to a "
              "package installed with `pip install -e`, install it again)")


class PluginError(Exception):
    """A class that cannot be found, imported or used as asked; the message says what to do."""


@dataclass(frozen=True)
class Plugin:
    """One entry point: ``name = target`` in ``group``, declared by ``distribution``."""

    group: str
    name: str
    target: str
    distribution: str | None

    def describe(self) -> str:
        where = f"distribution {self.distribution}" if self.distribution else "no distribution"
        return f"{self.group} entry point {self.name!r} = {self.target!r} ({where})"


def is_path(name: str) -> bool:
    """Whether ``name`` is a dotted ``"package.module:Class"`` rather than a registered name."""
    return ":" in name


def add_search_path(folders: Iterable[str | Path]) -> None:
    """Make modules in ``folders`` importable for dotted paths (appended to ``sys.path``, so a
    lab's folder never shadows an installed package); idempotent."""
    for folder in folders:
        entry = str(Path(folder).expanduser().resolve())
        if entry not in sys.path:
            sys.path.append(entry)


def _distribution(ep: metadata.EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return f"{dist.metadata['Name']} {dist.version}" if dist is not None else None


@functools.lru_cache(maxsize=4)
def _scan(search_path: tuple[str, ...]) -> dict[str, dict[str, list[Plugin]]]:
    """Every entry point of the groups, by group and name, scanned once per ``sys.path`` (a
    scan reads every installed distribution's metadata: tens of milliseconds)."""
    found: dict[str, dict[str, list[Plugin]]] = {group: {} for group in GROUPS.values()}
    for group, by_name in found.items():
        for ep in metadata.entry_points(group=group):
            plugin = Plugin(group, ep.name, ep.value, _distribution(ep))
            same = by_name.setdefault(ep.name, [])
            if all(p.target != plugin.target for p in same):  # (one distribution seen twice)
                same.append(plugin)
    return found


def registered(kind: str) -> dict[str, list[Plugin]]:
    """Entry points of ``kind``'s group by name (several: a name two distributions declare)."""
    return _scan(tuple(sys.path))[GROUPS[kind]]


def known(kind: str) -> list[str]:
    """The registered names of ``kind``, sorted."""
    return sorted(registered(kind))


def find(kind: str, name: str) -> Plugin:
    """The entry point registered as ``name`` (nothing imported); ``PluginError`` if there is
    none or several."""
    plugins = registered(kind).get(name)
    word, words = WORDS[kind]
    if not plugins:
        names = ", ".join(known(kind)) or "none"
        raise PluginError(f"unknown {word} {name!r}; registered {words}: {names}. Name one of "
                          f"them or a class as \"package.module:Class\" {_REINSTALL}")
    if len(plugins) > 1:
        raise PluginError(f"{word} {name!r} is registered more than once: "
                          + "; ".join(p.describe() for p in plugins)
                          + ". Uninstall one of these distributions")
    return plugins[0]


def spec(kind: str, name: str) -> dict[str, str | None]:
    """What a ``describe`` reply tells of the class ``name`` names, without importing it:
    ``{"model": name, "target": "module:Class", "distribution": "name version" or None}``;
    ``PluginError`` for an unknown name or a class path whose module cannot be found."""
    word = WORDS[kind][0]
    if is_path(name):
        module = name.partition(":")[0]
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise PluginError(f"{word} {name!r}: no module {module!r} on the search path; make "
                              f"it importable: install its package, or put its folder in the "
                              f"configuration's [plugins] path")
        return {"model": name, "target": name, "distribution": None}
    plugin = find(kind, name)
    return {"model": name, "target": plugin.target, "distribution": plugin.distribution}


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def load(kind: str, name: str) -> type:
    """The class a configuration names as ``name`` (registered name or dotted path)."""
    word = WORDS[kind][0]
    if is_path(name):
        module, _, attr = name.partition(":")
        if not module or not attr:
            raise PluginError(f"{word} {name!r}: a class path reads \"package.module:Class\"")
        try:
            obj = _import(name)
        except ModuleNotFoundError as exc:
            raise PluginError(f"{word} {name!r}: cannot import {exc.name!r} ({exc}); make the "
                              f"module importable: install its package, or put its folder in "
                              f"the configuration's [plugins] path") from exc
        except Exception as exc:
            raise PluginError(f"{word} {name!r}: importing it failed: "
                              f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(obj, type):
            raise PluginError(f"{word} {name!r} is a {type(obj).__name__}, not a class")
        return obj
    plugin = find(kind, name)
    try:
        obj = _import(plugin.target)
    except Exception as exc:
        raise PluginError(f"{word} {name!r} failed to load: {plugin.describe()} raised "
                          f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, type):
        raise PluginError(f"{word} {name!r}: {plugin.describe()} names a "
                          f"{type(obj).__name__}, not a class")
    return obj


def check_class(cls: type, base: type, label: str) -> None:
    """``PluginError`` unless ``cls`` is a concrete subclass of ``base``."""
    if not issubclass(cls, base):
        raise PluginError(f"{label}: {cls.__module__}:{cls.__qualname__} is not a "
                          f"{base.__name__} (subclass {base.__module__}.{base.__name__})")
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise PluginError(f"{label}: {cls.__module__}:{cls.__qualname__} does not implement "
                          f"{', '.join(missing)} (abstract in {base.__name__})")


def options(cls: type, given_by_labd: Iterable[str] = ()) -> dict[str, inspect.Parameter]:
    """The constructor parameters a configuration may set (those labd passes left out)."""
    params = inspect.signature(cls).parameters
    skip = set(given_by_labd)
    return {n: p for n, p in params.items() if n not in skip
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def check_call(cls: type, kwargs: Mapping[str, Any], label: str,
               given_by_labd: Iterable[str] = ()) -> None:
    """``PluginError`` unless ``cls(**kwargs)`` matches the constructor's signature: naming the
    options it does not take and the ones it needs, and listing those it takes."""
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return  # no signature to check against (a C class): the call itself will tell
    try:
        sig.bind(**kwargs)
        return
    except TypeError:
        pass
    params = sig.parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = [k for k in kwargs if k not in params and not takes_any]
    needed = [n for n, p in params.items() if n not in kwargs and p.default is p.empty
              and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    labd_given = set(given_by_labd)
    allowed = ", ".join(options(cls, labd_given)) or "none"
    problems = []
    if unknown:
        problems.append(f"takes no option {', '.join(map(repr, unknown))} (its options: "
                        f"{allowed})")
    if needed:
        problems.append(f"needs option {', '.join(map(repr, needed))}")
    if not problems:
        problems.append(f"cannot be called with {sorted(kwargs)}")
    raise PluginError(f"{label} ({cls.__module__}:{cls.__qualname__}) " + "; ".join(problems))


@dataclass(frozen=True)
class Found:
    """A surveyed entry point: its class, or why it failed to load."""

    plugin: Plugin
    error: str | None


def interface(kind: str) -> tuple[type, ...]:
    """The base classes a class of ``kind`` must subclass (one of them)."""
    if kind == "driver":
        from drivers.base import Detector, Drive

        return (Drive, Detector)
    if kind == "bench":
        from drivers.sim.bench import Bench

        return (Bench,)
    import torch

    return (torch.nn.Module,)


def survey() -> dict[str, list[Found]]:
    """Every entry point of every group, loaded and checked against its interface (imports
    every plugin module): kind -> found."""
    result: dict[str, list[Found]] = {}
    for kind in GROUPS:
        rows = []
        for name, plugins in sorted(registered(kind).items()):
            label = f"{WORDS[kind][0]} {name!r}"
            try:
                cls = load(kind, name)
                bases = interface(kind)
                if not issubclass(cls, bases):
                    raise PluginError(f"{label}: {cls.__module__}:{cls.__qualname__} is not a "
                                      f"{' or '.join(b.__name__ for b in bases)}")
                check_class(cls, next(b for b in bases if issubclass(cls, b)), label)
                error = None
            except PluginError as exc:
                error = str(exc)
            rows += [Found(plugin, error) for plugin in plugins]
        result[kind] = rows
    return result
