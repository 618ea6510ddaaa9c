"""One system's instruments, built from its configuration tables: ``build_rig``.

A system's ``drive`` and ``detector`` tables name a driver (``driver = "sim.dac"`` or
``"package.module:Class"``, see ``drivers.plugins``) followed by the driver's own options; a
simulated system's ``bench`` table makes the bench both simulated instruments share (its class
is ``type``, by default the bench registered under the system's kind, then its options).

labd passes each constructor what it knows: a drive gets ``name``, ``channels`` and ``limits``
(default: the span of drive values the system's ranges produce through its encoding); a
detector ``name`` and ``samples`` (default: the bench's trace length, else the drive's
channels); both get ``bench`` when the system is simulated; a bench gets ``mapping`` and
``physics``. Everything is checked before anything is made, and every problem of the system is
reported at once (``RigError``): names, interfaces (``Drive``, ``Detector``, ``Bench``),
options against the constructors' signatures, limits against the encoding, the detector's
trace against the decoding. Nothing is opened: ``Instrument.open`` is the caller's.
"""

from __future__ import annotations

from typing import Any

from drivers import plugins
from drivers.base import Detector, Drive, Instrument, float32_bounds
from drivers.physics.encoding import Mapping
from drivers.plugins import PluginError
from drivers.sim.bench import Bench

#: Constructor arguments labd sets itself, by role (a configuration may override ``limits``
#: and ``samples``).
SET_BY_LABD = {Drive: ("name", "channels", "bench"), Detector: ("name", "bench")}


class RigError(Exception):
    """Every problem found while building one system's rig, one line each, each starting
    with the table it concerns (``bench: ``, ``drive: ``, ``detector: ``)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _made(label: str, cls: type, kwargs: dict[str, Any]) -> Any:
    """``cls(**kwargs)``, a constructor's exception turned into ``PluginError``."""
    try:
        return cls(**kwargs)
    except Exception as exc:
        raise PluginError(f"{label} ({cls.__module__}:{cls.__qualname__}) cannot be made: "
                          f"{type(exc).__name__}: {exc}") from exc


def build_bench(kind: str, mapping: Mapping, physics: dict[str, Any],
                table: dict[str, Any]) -> Bench:
    """The simulated bench of a ``bench`` table (``type`` defaults to ``kind``)."""
    options = dict(table)
    name = options.pop("type", kind)
    label = f"bench {name!r}"
    cls = plugins.load("bench", name)
    plugins.check_class(cls, Bench, label)
    kwargs = {"mapping": mapping, "physics": dict(physics), **options}
    plugins.check_call(cls, kwargs, label, ("mapping", "physics"))
    return _made(label, cls, kwargs)


def _instrument(role: type[Instrument], system: str, table: dict[str, Any],
                defaults: dict[str, Any], bench: Bench | None, simulated: bool) -> Any:
    """The drive or detector of one table, checked then made (``None`` when the system's bench
    failed, so the instrument cannot be made; its class and options are still checked)."""
    options = dict(table)
    where = "drive" if role is Drive else "detector"
    name = options.pop("driver", None)
    if not isinstance(name, str) or not name:
        raise PluginError("no driver named (driver = \"registered.name\" or "
                          "\"package.module:Class\")")
    label = f"driver {name!r}"
    cls = plugins.load("driver", name)
    plugins.check_class(cls, role, label)
    fixed = [k for k in SET_BY_LABD[role] if k in options]
    if fixed:
        raise PluginError(f"{label}: {', '.join(fixed)} set by labd, not by the configuration")
    params = plugins.options(cls)
    if simulated and "bench" not in params:
        raise PluginError(f"{label} is not a simulated instrument (it takes no bench): remove "
                          f"the system's bench table, or name a simulated driver")
    if not simulated and "bench" in params:
        raise PluginError(f"{label} is a simulated instrument: give the system a bench table "
                          f"(bench = {{ seed = 0 }})")
    kwargs = {"name": f"{system}.{where}", **defaults, **options}
    if simulated:
        kwargs["bench"] = bench
    plugins.check_call(cls, kwargs, label, SET_BY_LABD[role])
    if simulated and bench is None:
        return None
    return _made(label, cls, kwargs)


def _check_fit(mapping: Mapping, drive: Drive, detector: Detector) -> list[str]:
    """Problems between the mapping and the made instruments: limits, trace length."""
    problems = []
    (lo, hi), (llo, lhi) = mapping.drive_span(), float32_bounds(*drive.limits)
    if lo < llo or hi > lhi:
        enc = mapping.encoding
        problems.append(
            f"drive: limits [{llo:g}, {lhi:g}] do not cover the drive values this system "
            f"produces, [{lo:g}, {hi:g}] (input_range {list(mapping.input_range)}, param_range "
            f"{list(mapping.param_range)}, layout {enc.layout!r}, scale {enc.scale:g}, offset "
            f"{enc.offset:g}): every forward would be refused. Widen the drive's limits if the "
            f"instrument and the sample allow it, or narrow the ranges or the encoding's scale")
    try:
        mapping.decoding.width(detector.samples, mapping.output_dim)
    except ValueError as exc:
        problems.append(f"detector: {exc} (output_dim {mapping.output_dim}): lower output_dim or "
                        f"decoding.start, or read more samples")
    return problems


def build_rig(system: str, kind: str, mapping: Mapping, physics: dict[str, Any],
              bench_table: dict[str, Any] | None, drive_table: dict[str, Any],
              detector_table: dict[str, Any]) -> tuple[Drive, Detector]:
    """The (not yet opened) drive and detector of system ``system``; ``RigError`` lists every
    problem found."""
    problems: list[str] = []
    bench = None
    if bench_table is not None:
        try:
            bench = build_bench(kind, mapping, physics, bench_table)
        except PluginError as exc:
            problems.append(f"bench: {exc}")
    simulated = bench_table is not None
    samples = bench.samples if bench is not None else mapping.channels
    made: list[Any] = []
    for role, table, defaults in (
            (Drive, drive_table, {"channels": mapping.channels, "limits": mapping.drive_span()}),
            (Detector, detector_table, {"samples": samples})):
        try:
            made.append(_instrument(role, system, table, defaults, bench, simulated))
        except PluginError as exc:
            problems.append(f"{'drive' if role is Drive else 'detector'}: {exc}")
            made.append(None)
    drive, detector = made
    if drive is not None and detector is not None:
        problems += _check_fit(mapping, drive, detector)
    if problems:
        raise RigError(problems)
    return drive, detector
