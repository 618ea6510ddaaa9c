"""The daemon's configuration: a TOML file validated by pydantic.

Layout of the file (every table optional except ``systems``; see ``labd/default.toml``, the
embedded default, for a commented example)::

    [server]            control/event endpoints, message and batch limits, queue depth
    [store]             where measurements are recorded (see labd.daemon.recording)
    [plugins]           path: folders searched for "package.module:Class" names
    [systems.NAME]      one physical system: kind, dimensions, ranges, encoding, decoding
                        (together its ``mapping``), nominal physics and model, and its two
                        instruments
    [systems.NAME.bench]     for simulated systems: the shared simulated bench (type, seed...)
    [systems.NAME.drive]     driver = "registered.name" or "package.module:Class", then the
                             driver's own options
    [systems.NAME.detector]  likewise

Unknown keys are errors (a typo in a lab config must not be silently ignored), except inside
``physics``, ``bench``, ``drive`` and ``detector``, whose keys belong to the classes they name
and are checked against them when the system is built (``labd.daemon.system.build_systems``;
``labd config --check`` builds without opening anything).

Loading a file appends its ``[plugins] path`` folders (relative to the file's folder; default
the file's folder itself) to ``sys.path``, so that its dotted class paths import in this
process: the daemon's, ``labd config --check``'s or the trainer's with ``--config``.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from drivers import plugins
from drivers.physics.encoding import Mapping
from protocols.v1 import DEFAULT_CONTROL_ENDPOINT, DEFAULT_EVENT_ENDPOINT


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Config):
    control: str = DEFAULT_CONTROL_ENDPOINT
    #: The PUB socket for status and fault events; empty string to disable.
    events: str = DEFAULT_EVENT_ENDPOINT
    #: Largest request accepted, all frames together (bytes); larger ones get ``too_large``.
    max_message_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    #: Requests per system waiting to be measured before ``busy`` is answered.
    queue_depth: int = Field(64, ge=1)
    #: Replies remembered per daemon to answer a retried request ``id`` without measuring again.
    reply_cache: int = Field(256, ge=0)


class StoreConfig(_Config):
    #: SQLite file; empty string records nothing. ``~`` is expanded.
    path: str = "~/.local/share/labd/measurements.sqlite"
    #: "normal": a measurement whose reply left survives a crash of the daemon (kill -9);
    #: "full": also survives power loss or an OS crash (one fsync per commit; slower).
    synchronous: Literal["normal", "full"] = "normal"
    #: Delete the oldest measurements when the database exceeds this many bytes (0: no limit).
    max_bytes: int = Field(0, ge=0)
    #: Delete measurements older than this many days (0: keep forever).
    max_age_days: float = Field(0.0, ge=0)
    #: Seconds between two pruning passes of the running daemon (one also runs at start).
    prune_interval_s: float = Field(600.0, gt=0)


class SecurityConfig(_Config):
    """CURVE encryption and authentication (see ``labd.daemon.auth`` and ``labd keys``)."""

    curve: bool = False
    #: The server's ``.key_secret`` certificate file (``labd keys server DIR``).
    server_key: str = ""
    #: TOML allow-list of named client public keys (``labd keys add``).
    clients: str = ""
    #: Allow binding a non-loopback address without CURVE (everyone on the network may drive
    #: the instruments).
    insecure: bool = False

    @model_validator(mode="after")
    def _complete(self) -> SecurityConfig:
        if self.curve and not (self.server_key and self.clients):
            raise ValueError("curve = true needs server_key and clients files")
        return self


class PluginsConfig(_Config):
    #: Folders searched for the modules of "package.module:Class" names, relative to the
    #: configuration file's folder (absolute once loaded; unused by the embedded default).
    path: list[str] = ["."]


class InstrumentConfig(BaseModel):
    """``driver`` names a ``labd.drivers`` entry point or a class ("package.module:Class");
    the other keys are the driver's options."""

    model_config = ConfigDict(extra="allow")

    driver: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SystemConfig(_Config):
    """One system. Its table holds the mapping's keys (``input_dim``, ``param_dim``,
    ``output_dim``, ``input_range``, ``param_range``, ``encoding``, ``decoding``) beside the
    others; they are gathered into ``mapping``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    description: str = ""
    mapping: Mapping
    #: Largest batch measured in one go; larger requests are measured in chunks.
    max_batch: int = Field(1024, ge=1)
    #: Nominal (textbook) physics of the rig, read by the nominal model and the bench.
    physics: dict[str, Any] = Field(default_factory=dict)
    #: The nominal model: a ``labd.physics`` entry point or "package.module:Class"; not set:
    #: the model registered under ``kind``, if any; "": none (the trainer then fits its twin
    #: from measurements alone).
    nominal: str | None = None
    #: Present for simulated systems: the shared simulated bench (``type``, default ``kind``;
    #: then its options).
    bench: dict[str, Any] | None = None
    drive: InstrumentConfig
    detector: InstrumentConfig
    #: Record every measurement of this system in the store.
    record: bool = True
    #: Seconds one instrument call may take before the system is declared faulted.
    timeout_s: float = Field(60.0, gt=0)
    #: Requests waiting before ``busy``; the server's ``queue_depth`` when not set.
    queue_depth: int | None = Field(None, ge=1)
    #: Names of the clients (CURVE keys) allowed to use this system; all when not set.
    clients: list[str] | None = None
    #: Measure on the server thread: only for instantaneous systems (loopback).
    inline: bool = False

    @model_validator(mode="before")
    @classmethod
    def _gather_mapping(cls, data: Any) -> Any:
        if isinstance(data, dict) and "mapping" not in data:
            keys = Mapping.model_fields
            data = {**{k: v for k, v in data.items() if k not in keys},
                    "mapping": {k: v for k, v in data.items() if k in keys}}
        return data


class DaemonConfig(_Config):
    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    security: SecurityConfig = SecurityConfig()
    plugins: PluginsConfig = PluginsConfig()
    systems: dict[str, SystemConfig]

    @model_validator(mode="after")
    def _access_needs_keys(self) -> DaemonConfig:
        restricted = [n for n, s in self.systems.items() if s.clients is not None]
        if restricted and not self.security.curve:
            raise ValueError(f"systems {restricted} restrict clients by name, which needs "
                             f"[security] curve = true")
        return self

    @field_validator("systems")
    @classmethod
    def _names(cls, systems: dict[str, SystemConfig]) -> dict[str, SystemConfig]:
        if not systems:
            raise ValueError("at least one system must be configured")
        for name in systems:
            if not name or len(name) > 64 or not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"system name {name!r}: use 1-64 letters, digits, - or _")
        return systems


class ConfigError(Exception):
    """A configuration file that cannot be read or does not validate."""


def _where(loc: tuple[Any, ...]) -> str:
    """A validation error's location as the file spells it (the mapping's keys sit in the
    system's table)."""
    return ".".join(str(p) for p in loc if p != "mapping")


def _parse(text: str, origin: str, folder: Path | None) -> DaemonConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from None
    try:
        config = DaemonConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"{origin}: invalid configuration:"]
        lines += [f"  {_where(err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise ConfigError("\n".join(lines)) from None
    if folder is None:
        return config
    found = PluginsConfig(path=[str((folder / p).resolve()) for p in config.plugins.path])
    plugins.add_search_path(found.path)
    return config.model_copy(update={"plugins": found})


def default_config_text() -> str:
    """The embedded default configuration (every simulated system, fast timing, loopback)."""
    return resources.files("labd").joinpath("default.toml").read_text()


def load_config(path: str | Path | None = None) -> DaemonConfig:
    """The configuration at ``path``, or the embedded default when ``path`` is None; its
    plugin folders are appended to ``sys.path`` (see the module's docstring)."""
    if path is None:
        return _parse(default_config_text(), "embedded default", None)
    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read configuration {p}: {exc.strerror}") from None
    return _parse(text, str(p), p.resolve().parent)
