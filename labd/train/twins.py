"""Digital twins: differentiable models of a physical system learned from its measurements.

Contract:

* ``collect(hardware, samples, repeats)`` measures random ``x`` and per-row ``theta`` drawn
  uniformly inside the system's ranges, each point ``repeats`` times (averaged, which also
  estimates the detector noise), and returns ``TwinData``.
* ``fit_twin(data, description, family)`` fits a ``Twin`` from ``TwinData`` or from any iterable
  of ``(x, theta, y)`` array chunks (e.g. a measurement-store reader), holds out a fraction
  and reports the held-out normalised RMSE (RMSE over the standard deviation of the measured
  ``y``; 0 is perfect, 1 is no better than predicting the mean).
* Families: ``mlp`` (an MLP of the system's control vector, from the measurements alone: what
  a system without a nominal model gets) and ``residual`` (the nominal model, with a learned
  per-output gain and offset, plus an MLP correction); ``default_family(description)`` picks
  ``residual`` when the system has a nominal model. Each family has its default size and
  fitting epochs (``HIDDEN``, ``EPOCHS``).
* ``save_twin`` writes ``TWIN.pt`` (``torch.save`` of a dict of tensors only) and ``TWIN.json``
  (``FORMAT``, family, sizes, provenance: the system's description, data ranges, sample
  counts, date, held-out NRMSE); ``load_twin`` rebuilds it with
  ``torch.load(weights_only=True)``.
* ``TwinRefiner`` keeps refining a twin during PAT from the measurements PAT makes anyway.

Nothing is printed unless asked: ``progress=True`` shows tqdm bars; ``collect`` and
``fit_twin`` log what they do and how long it took on the ``labd.train.twins`` logger (INFO;
``labd``'s command line shows it, a notebook only if it configures logging).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from labd.train.datasets import DataError
from labd.train.hardware import Hardware

log = logging.getLogger(__name__)

FAMILIES = ("mlp", "residual")
#: The twin files' format (``save_twin``): 2 since the MLP reads the control vector.
FORMAT = "labd-twin-2"
#: What each family learns, for messages.
WHAT = {"mlp": "an MLP of the measurements alone", "residual": "the nominal model with a "
        "learned per-output gain and offset and an MLP correction"}
#: Said when a twin is fitted from data only because the system has no nominal model (%s: it).
NO_NOMINAL_TWIN = ("system %r has no nominal model: its twin is an MLP fitted from the "
                   "measurements alone, which follows the system less closely than a residual "
                   "twin on a nominal model would (see the held-out NRMSE in its report); give "
                   "the system a nominal model (docs/plugins.md) for a residual twin")
#: Each family's defaults: hidden layers and fitting epochs (``fit_twin``), random points to
#: collect (``labd twin collect``). A data-only twin learns the whole system, not a correction
#: to a model: on the example Duffing chain, 512x3 instead of 256x256 took its held-out NRMSE
#: from 0.118 to 0.069 on 20,000 points, and 40,000 points to 0.048.
HIDDEN = {"mlp": (512, 512, 512), "residual": (256, 256)}
EPOCHS = {"mlp": 60, "residual": 60}
SAMPLES = {"mlp": 40000, "residual": 20000}


@dataclass
class TwinData:
    """Measurements ``y = f(x, theta)`` (``theta`` one row per sample) and their origin."""

    x: np.ndarray
    theta: np.ndarray
    y: np.ndarray
    description: dict[str, Any] = field(default_factory=dict)
    repeats: int = 1
    noise_std: float = float("nan")

    def save(self, path: str | Path) -> None:
        meta = {"description": self.description, "repeats": self.repeats,
                "noise_std": self.noise_std}
        np.savez_compressed(path, x=self.x, theta=self.theta, y=self.y,
                            meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: str | Path) -> TwinData:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            return cls(f["x"], f["theta"], f["y"], meta["description"], meta["repeats"],
                       meta["noise_std"])


def collect(hardware: Hardware, samples: int, repeats: int = 1, seed: int = 0,
            batch: int = 2048, progress: bool = False) -> TwinData:
    """Measure ``samples`` random points ``repeats`` times each (``samples*repeats`` shots)."""
    d = hardware.description
    started = time.perf_counter()
    log.info("collecting twin data: %d random points x %d repeats of %s (%d shots)",
             samples, repeats, hardware.system, samples * repeats)
    rng = np.random.default_rng(seed)
    (xl, xh), (tl, th) = hardware.input_range, hardware.param_range
    x = rng.uniform(xl, xh, (samples, int(d["input_dim"]))).astype(np.float32)
    theta = rng.uniform(tl, th, (samples, int(d["param_dim"]))).astype(np.float32)
    y = np.zeros((samples, int(d["output_dim"])), np.float32)
    var = np.zeros(int(d["output_dim"]), np.float64)
    per_request = max(1, batch // repeats)
    bar = tqdm(total=samples * repeats, desc=f"collect {hardware.system}", unit="shot",
               disable=not progress)
    for start in range(0, samples, per_request):
        sl = slice(start, min(samples, start + per_request))
        n = sl.stop - sl.start
        xs = np.repeat(x[sl], repeats, axis=0)
        ts = np.repeat(theta[sl], repeats, axis=0)
        ys = hardware.forward(xs, ts).reshape(n, repeats, -1)
        y[sl] = ys.mean(1)
        if repeats > 1:
            var += ys.var(1, ddof=1).sum(0)
        bar.update(n * repeats)
    bar.close()
    noise = float(np.sqrt(var.mean() / samples)) if repeats > 1 else float("nan")
    log.info("collected %d shots of %s in %.1f s", samples * repeats, hardware.system,
             time.perf_counter() - started)
    return TwinData(x, theta, y, d, repeats, noise)


def _concat(chunks: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> TwinData:
    xs, ts, ys = [], [], []
    for x, theta, y in chunks:
        x = np.asarray(x, np.float32)
        theta = np.asarray(theta, np.float32)
        if theta.ndim == 1:
            theta = np.broadcast_to(theta, (x.shape[0], theta.shape[0]))
        xs.append(x)
        ts.append(theta)
        ys.append(np.asarray(y, np.float32))
    if not xs:
        raise ValueError("no measurements to fit a twin on")
    return TwinData(np.concatenate(xs), np.concatenate(ts), np.concatenate(ys))


class Twin(nn.Module):
    """``y = f_m(x, theta)`` learned from measurements; float32 ``[B, n]`` in and out.

    ``y = base(x, theta) + y_std * mlp(z)``: ``base`` is the nominal model with a per-output
    gain and offset (``residual``) or the mean output (``mlp``); ``z`` is the system's control
    vector ``u`` (its encoding's layout applied to ``x`` and ``theta``, e.g. ``x + theta`` for
    an ``add`` layout: what the instrument is actually driven with, without hold or padding),
    standardised per element on the training data.
    """

    def __init__(self, description: dict[str, Any], family: str = "mlp",
                 hidden: tuple[int, ...] = (256, 256)) -> None:
        super().__init__()
        from drivers.physics.nominal import mapping_of

        if family not in FAMILIES:
            raise ValueError(f"unknown twin family {family!r}; use one of {FAMILIES}")
        self.description = dict(description)
        self.family = family
        self.hidden = tuple(hidden)
        self.encoding = mapping_of(description).encoding
        n_y = int(description["output_dim"])
        lo, hi = self._declared()
        self.register_buffer("u_mean", (lo + hi) / 2)
        self.register_buffer("u_scale", (hi - lo) / 2)
        self.register_buffer("y_mean", torch.zeros(n_y))
        self.register_buffer("y_std", torch.ones(n_y))
        sizes = [len(lo), *self.hidden, n_y]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.SiLU())
        self.mlp = nn.Sequential(*layers)
        self.nominal: nn.Module | None = None
        if family == "residual":
            from drivers.physics.nominal import nominal_model

            self.nominal = nominal_model(description)
            self.nominal.requires_grad_(False)
            self.gain = nn.Parameter(torch.ones(n_y))
            self.offset = nn.Parameter(torch.zeros(n_y))
            with torch.no_grad():  # the correction starts at zero: the twin starts nominal
                self.mlp[-1].weight.zero_()
                self.mlp[-1].bias.zero_()

    def _declared(self, device: torch.device | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each control element's least and greatest value within the declared ranges."""
        d = self.description
        ends = [self.encoding.combine(
            torch.full((1, int(d["input_dim"])), float(x), device=device),
            torch.full((1, int(d["param_dim"])), float(t), device=device))[0]
            for x, t in zip(d["input_range"], d["param_range"], strict=True)]
        return torch.minimum(*ends), torch.maximum(*ends)

    def _z(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return (self.encoding.combine(x, theta) - self.u_mean) / self.u_scale

    def base(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """The physics prior (nominal with per-output gain and offset), or the mean."""
        if self.nominal is None:
            return self.y_mean.expand(x.shape[0], -1)
        return self.gain * self.nominal(x, theta) + self.offset

    def forward(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return self.base(x, theta) + self.y_std * self.mlp(self._z(x, theta))

    @torch.no_grad()
    def calibrate(self, data: TwinData) -> None:
        """Input and output statistics, and the nominal's gain and offset by least squares per
        output. Each control element is scaled to about [-1, 1] on the data (a uniform spread
        exactly so: ``sqrt(3)`` standard deviations), at most 1000 times its declared range's."""
        device = self.y_mean.device
        u = self.encoding.combine(torch.from_numpy(data.x).to(device),
                                  torch.from_numpy(data.theta).to(device))
        lo, hi = self._declared(device)
        self.u_scale.copy_((3 ** 0.5 * u.std(0)).clamp_min(5e-4 * (hi - lo) + 1e-12))
        self.u_mean.copy_(u.mean(0))
        y = torch.from_numpy(data.y).to(device)
        self.y_mean.copy_(y.mean(0))
        self.y_std.copy_(y.std(0).clamp_min(1e-6 * float(y.abs().mean()) + 1e-12))
        if self.nominal is None:
            return
        m = torch.cat([self.nominal(torch.from_numpy(data.x[i:i + 4096]).to(device),
                                    torch.from_numpy(data.theta[i:i + 4096]).to(device))
                       for i in range(0, len(y), 4096)])
        mc, yc = m - m.mean(0), y - y.mean(0)
        gain = (mc * yc).sum(0) / (mc * mc).sum(0).clamp_min(1e-30)
        self.gain.copy_(gain)
        self.offset.copy_(y.mean(0) - gain * m.mean(0))


def nrmse(twin: nn.Module, x: np.ndarray, theta: np.ndarray, y: np.ndarray) -> float:
    """RMSE of the twin on these points over the standard deviation of the measured ``y``."""
    pred = predict(twin, x, theta)
    return float(np.sqrt(np.mean((pred - y) ** 2)) / (np.std(y) + 1e-30))


def device_of(model: nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for a model with neither)."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, theta: np.ndarray, batch: int = 4096) -> np.ndarray:
    """The model's ``y`` for host arrays, computed on the model's device, returned on the host."""
    device = device_of(model)
    out = [model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch])).to(device),
                 torch.from_numpy(np.ascontiguousarray(theta[i:i + batch])).to(device)
                 ).cpu().numpy()
           for i in range(0, len(x), batch)]
    return np.concatenate(out)


def _train(twin: Twin, x: torch.Tensor, theta: torch.Tensor, y: torch.Tensor, epochs: int,
           lr: float, batch: int, gen: torch.Generator, progress: bool) -> None:
    """Adam with a one-cycle schedule on the standardised squared error. Without a progress
    bar, the loss is logged (INFO) after each quarter of the epochs."""
    opt = torch.optim.Adam(twin.parameters(), lr=lr)
    steps = epochs * max(1, (len(y) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    inv_std = 1 / twin.y_std
    started = time.perf_counter()
    quarters = {round(epochs * k / 4) for k in (1, 2, 3)} - {0, epochs}
    bar = tqdm(range(epochs), desc=f"fit {twin.family} twin", unit="epoch",
               disable=not progress)
    for epoch in bar:
        perm = torch.randperm(len(y), generator=gen, device=y.device)
        total = 0.0
        for i in range(0, len(y), batch):
            idx = perm[i:i + batch]
            loss = (((twin(x[idx], theta[idx]) - y[idx]) * inv_std) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        bar.set_postfix(loss=f"{total / len(y):.4g}")
        if not progress and epoch + 1 in quarters:
            log.info("fitting %s twin: epoch %d of %d, training loss %.4g, %.0f s so far",
                     twin.family, epoch + 1, epochs, total / len(y),
                     time.perf_counter() - started)


def default_family(description: dict[str, Any]) -> str:
    """``residual`` when the system has a nominal model (``describe`` names one), else ``mlp``
    (from the measurements alone)."""
    return "residual" if description.get("nominal") else "mlp"


def fit_twin(data: TwinData | Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
             description: dict[str, Any] | None = None, family: str | None = None,
             hidden: tuple[int, ...] | None = None, epochs: int | None = None,
             lr: float = 3e-3, batch: int = 256, holdout: float = 0.1, seed: int = 0,
             progress: bool = False, device: str = "cpu") -> tuple[Twin, dict[str, Any]]:
    """Fit a twin (on ``device``, where it stays); returns it with a report (held-out NRMSE,
    the nominal's, sample counts).

    ``family`` defaults to ``default_family(description)``; ``hidden`` and ``epochs`` to the
    family's (``HIDDEN``, ``EPOCHS``).
    """
    if not isinstance(data, TwinData):
        data = _concat(data)
        data.description = dict(description or {})
    description = dict(description or data.description)
    if not description:
        raise ValueError("fit_twin needs the system's description (dimensions and ranges)")
    family = family or default_family(description)
    hidden = tuple(hidden or HIDDEN[family])
    epochs = epochs or EPOCHS[family]
    started = time.perf_counter()
    gen = torch.Generator(device).manual_seed(seed)
    n = len(data.y)
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * holdout))
    val, tr = perm[:n_val], perm[n_val:]
    with torch.random.fork_rng(devices=[]):  # seeded weights; the caller's random state kept
        torch.manual_seed(seed)
        twin = Twin(description, family, hidden).to(device)
    log.info("fitting a twin of %s (%s: %s): %d epochs over %d points, %d held out",
             description.get("name"), family, WHAT[family], epochs, len(tr), n_val)
    twin.calibrate(TwinData(data.x[tr], data.theta[tr], data.y[tr]))
    report: dict[str, Any] = {"family": family, "hidden": list(hidden), "epochs": epochs,
                              "n_train": len(tr), "n_holdout": int(n_val)}
    if twin.nominal is not None:
        report["nominal_nrmse"] = nrmse(twin.nominal, data.x[val], data.theta[val], data.y[val])
        report["calibrated_nominal_nrmse"] = nrmse(twin, data.x[val], data.theta[val],
                                                   data.y[val])
    tensors = [torch.from_numpy(np.ascontiguousarray(a[tr])).to(device)
               for a in (data.x, data.theta, data.y)]
    _train(twin, *tensors, epochs=epochs, lr=lr, batch=batch, gen=gen, progress=progress)
    twin.eval()
    report["holdout_nrmse"] = nrmse(twin, data.x[val], data.theta[val], data.y[val])
    if data.noise_std == data.noise_std:  # not NaN: repeats measured the noise
        report["noise_nrmse"] = float(data.noise_std / (np.std(data.y[val]) + 1e-30))
    report["fit_s"] = round(time.perf_counter() - started, 1)
    report["provenance"] = provenance(data, description)
    log.info("fitted the %s twin of %s in %.0f s: held-out NRMSE %.4f", family,
             description.get("name"), report["fit_s"], report["holdout_nrmse"])
    return twin, report


def provenance(data: TwinData, description: dict[str, Any]) -> dict[str, Any]:
    return {
        "system": description.get("name"),
        "description": description,
        "n_samples": len(data.y),
        "repeats": int(data.repeats),
        "x_range": [float(data.x.min()), float(data.x.max())],
        "theta_range": [float(data.theta.min()), float(data.theta.max())],
        "y_range": [float(data.y.min()), float(data.y.max())],
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def save_twin(path: str | Path, twin: Twin, report: dict[str, Any]) -> Path:
    """Write ``path`` (state dict of tensors) and its JSON sidecar; returns the sidecar path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone() for k, v in twin.state_dict().items()}
    torch.save(state, path)
    meta = {"format": FORMAT, "family": twin.family, "hidden": list(twin.hidden),
            "description": twin.description, "report": report}
    _sidecar(path).write_text(json.dumps(meta, indent=2, default=float) + "\n")
    return _sidecar(path)


def load_twin(path: str | Path, device: str = "cpu") -> Twin:
    """The twin ``save_twin`` wrote at ``path``, on ``device``; ``DataError`` if its sidecar is
    not a twin of this format (``OSError`` if a file is missing)."""
    path = Path(path)
    try:
        meta = json.loads(_sidecar(path).read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{_sidecar(path)} is not a twin's sidecar: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise DataError(f"{path} is a twin of format {found!r}; this labd reads {FORMAT!r}: "
                        f"fit it again from its measurements (labd twin fit)")
    twin = Twin(meta["description"], meta["family"], tuple(meta["hidden"])).to(device)
    twin.load_state_dict(torch.load(path, weights_only=True, map_location=device))
    twin.eval()
    return twin


@dataclass(eq=False)
class TwinRefiner:
    """Refines a twin during PAT from the hardware measurements the training makes anyway.

    Use ``refiner.record`` as a ``PhysicalLayer.recorder``; call ``step()`` after each
    optimiser step: every ``every`` calls it takes ``steps`` Adam steps (learning rate ``lr``,
    ``batch`` rows) on a replay buffer of the most recent ``capacity`` measurements mixed
    half-and-half with the original twin data (so the twin tracks where training goes and the
    device's drift without forgetting the rest of the range).
    """

    twin: Twin
    data: TwinData
    capacity: int = 20000
    every: int = 1
    steps: int = 5
    batch: int = 256
    lr: float = 3e-4
    seed: int = 0

    def __post_init__(self) -> None:
        self.opt = torch.optim.Adam(self.twin.parameters(), lr=self.lr)
        self.rng = np.random.default_rng(self.seed)
        self._recent: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (x, theta, y)
        self._count = 0

    def record(self, x: np.ndarray, theta: np.ndarray, y: np.ndarray) -> None:
        if theta.ndim == 1:
            theta = np.broadcast_to(theta, (x.shape[0], theta.shape[0]))
        self._recent.append((x.copy(), np.array(theta), y.copy()))
        while sum(len(r[2]) for r in self._recent) - len(self._recent[0][2]) >= self.capacity:
            del self._recent[0]

    def step(self) -> None:
        self._count += 1
        if not self._recent or self._count % self.every:
            return
        bx, bt, by = (np.concatenate(a) for a in zip(*self._recent, strict=True))
        half = self.batch // 2
        self.twin.train()
        device = device_of(self.twin)
        for _ in range(self.steps):
            i = self.rng.integers(0, len(by), half)
            j = self.rng.integers(0, len(self.data.y), self.batch - half)
            x = torch.from_numpy(np.concatenate([bx[i], self.data.x[j]])).to(device)
            t = torch.from_numpy(np.concatenate([bt[i], self.data.theta[j]])).to(device)
            y = torch.from_numpy(np.concatenate([by[i], self.data.y[j]])).to(device)
            loss = (((self.twin(x, t) - y) / self.twin.y_std) ** 2).mean()
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        self.twin.eval()
