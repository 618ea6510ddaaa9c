"""Digital twins: differentiable models of a physical system learned from its measurements.

Contract:

* ``collect(hardware, samples, repeats)`` measures random ``x`` and per-row ``theta`` drawn
  uniformly inside the system's ranges, each point ``repeats`` times (averaged, which also
  estimates the detector noise), and returns ``TwinData``.
* ``fit_twin(data, description, family)`` fits a ``Twin`` from ``TwinData`` or from any iterable
  of ``(x, theta, y)`` array chunks (e.g. a measurement-store reader), holds out a fraction
  and reports the held-out normalised RMSE (RMSE over the standard deviation of the measured
  ``y``; 0 is perfect, 1 is no better than predicting the mean).
* Families: ``mlp`` (a plain MLP of the normalised ``x`` and ``theta``) and ``residual`` (the
  nominal model, with a learned per-output gain and offset, plus an MLP correction).
* ``save_twin`` writes ``TWIN.pt`` (``torch.save`` of a dict of tensors only) and ``TWIN.json``
  (family, sizes, provenance: the system's description, data ranges, sample counts, date,
  held-out NRMSE); ``load_twin`` rebuilds it with ``torch.load(weights_only=True)``.
* ``TwinRefiner`` keeps refining a twin during PAT from the measurements PAT makes anyway.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from labd.train.hardware import Hardware

FAMILIES = ("mlp", "residual")


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
            batch: int = 2048, progress: bool = True) -> TwinData:
    """Measure ``samples`` random points ``repeats`` times each (``samples*repeats`` shots)."""
    d = hardware.description
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
    """``y = f_m(x, theta)`` learned from measurements; float32 ``[B, n]`` in and out."""

    def __init__(self, description: dict[str, Any], family: str = "mlp",
                 hidden: tuple[int, ...] = (256, 256)) -> None:
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"unknown twin family {family!r}; use one of {FAMILIES}")
        self.description = dict(description)
        self.family = family
        self.hidden = tuple(hidden)
        n_x, n_p = int(description["input_dim"]), int(description["param_dim"])
        n_y = int(description["output_dim"])
        lo = torch.tensor([description["input_range"][0]] * n_x
                          + [description["param_range"][0]] * n_p, dtype=torch.float32)
        hi = torch.tensor([description["input_range"][1]] * n_x
                          + [description["param_range"][1]] * n_p, dtype=torch.float32)
        self.register_buffer("in_lo", lo)
        self.register_buffer("in_span", hi - lo)
        self.register_buffer("y_mean", torch.zeros(n_y))
        self.register_buffer("y_std", torch.ones(n_y))
        sizes = [n_x + n_p, *self.hidden, n_y]
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

    def _z(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        if theta.ndim == 1:
            theta = theta.expand(x.shape[0], -1)
        return 2 * (torch.cat([x, theta], 1) - self.in_lo) / self.in_span - 1

    def base(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """The physics prior (nominal with per-output gain and offset), or the mean."""
        if self.nominal is None:
            return self.y_mean.expand(x.shape[0], -1)
        return self.gain * self.nominal(x, theta) + self.offset

    def forward(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return self.base(x, theta) + self.y_std * self.mlp(self._z(x, theta))

    @torch.no_grad()
    def calibrate(self, data: TwinData) -> None:
        """Output statistics, and the nominal's gain and offset by least squares per output."""
        device = self.y_mean.device
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
           lr: float, batch: int, gen: torch.Generator, progress: bool, desc: str) -> None:
    opt = torch.optim.Adam(twin.parameters(), lr=lr)
    steps = epochs * max(1, (len(y) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    inv_std = 1 / twin.y_std
    bar = tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress)
    for _ in bar:
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


def fit_twin(data: TwinData | Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
             description: dict[str, Any] | None = None, family: str = "mlp",
             hidden: tuple[int, ...] = (256, 256), epochs: int = 60, lr: float = 3e-3,
             batch: int = 256, holdout: float = 0.1, seed: int = 0,
             progress: bool = True, device: str = "cpu") -> tuple[Twin, dict[str, Any]]:
    """Fit a twin (on ``device``, where it stays); returns it with a report (held-out NRMSE,
    the nominal's, sample counts)."""
    if not isinstance(data, TwinData):
        data = _concat(data)
        data.description = dict(description or {})
    description = dict(description or data.description)
    if not description:
        raise ValueError("fit_twin needs the system's description (dimensions and ranges)")
    torch.manual_seed(seed)
    gen = torch.Generator(device).manual_seed(seed)
    n = len(data.y)
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * holdout))
    val, tr = perm[:n_val], perm[n_val:]
    twin = Twin(description, family, hidden).to(device)
    train_part = TwinData(data.x[tr], data.theta[tr], data.y[tr])
    twin.calibrate(train_part)
    report: dict[str, Any] = {"family": family, "n_train": len(tr), "n_holdout": int(n_val)}
    if twin.nominal is not None:
        report["nominal_nrmse"] = nrmse(twin.nominal, data.x[val], data.theta[val], data.y[val])
        report["calibrated_nominal_nrmse"] = nrmse(twin, data.x[val], data.theta[val],
                                                   data.y[val])
    tensors = [torch.from_numpy(np.ascontiguousarray(a[tr])).to(device)
               for a in (data.x, data.theta, data.y)]
    _train(twin, *tensors, epochs=epochs, lr=lr, batch=batch, gen=gen, progress=progress,
           desc=f"fit {family} twin")
    twin.eval()
    report["holdout_nrmse"] = nrmse(twin, data.x[val], data.theta[val], data.y[val])
    if data.noise_std == data.noise_std:  # not NaN: repeats measured the noise
        report["noise_nrmse"] = float(data.noise_std / (np.std(data.y[val]) + 1e-30))
    report["provenance"] = provenance(data, description)
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
    meta = {"format": "labd-twin-1", "family": twin.family, "hidden": list(twin.hidden),
            "description": twin.description, "report": report}
    _sidecar(path).write_text(json.dumps(meta, indent=2, default=float) + "\n")
    return _sidecar(path)


def load_twin(path: str | Path, device: str = "cpu") -> Twin:
    path = Path(path)
    meta = json.loads(_sidecar(path).read_text())
    twin = Twin(meta["description"], meta["family"], tuple(meta["hidden"])).to(device)
    twin.load_state_dict(torch.load(path, weights_only=True, map_location=device))
    twin.eval()
    return twin


class TwinRefiner:
    """Refines a twin during PAT from the hardware measurements the training makes anyway.

    Use ``refiner.record`` as a ``PhysicalLayer.recorder``; call ``step()`` after each
    optimiser step: every ``every`` calls it takes ``steps`` Adam steps on a replay buffer of
    the most recent ``capacity`` measurements mixed half-and-half with the original twin data
    (so the twin tracks where training goes and the device's drift without forgetting the
    rest of the range).
    """

    def __init__(self, twin: Twin, data: TwinData, capacity: int = 20000, every: int = 1,
                 steps: int = 5, batch: int = 256, lr: float = 3e-4, seed: int = 0) -> None:
        self.twin = twin
        self.data = data
        self.capacity = capacity
        self.every = every
        self.steps = steps
        self.batch = batch
        self.opt = torch.optim.Adam(twin.parameters(), lr=lr)
        self.rng = np.random.default_rng(seed)
        self._x: list[np.ndarray] = []
        self._t: list[np.ndarray] = []
        self._y: list[np.ndarray] = []
        self._count = 0
        self.updates = 0

    def record(self, x: np.ndarray, theta: np.ndarray, y: np.ndarray) -> None:
        if theta.ndim == 1:
            theta = np.broadcast_to(theta, (x.shape[0], theta.shape[0]))
        self._x.append(x.copy())
        self._t.append(np.array(theta))
        self._y.append(y.copy())
        while sum(len(a) for a in self._y) - len(self._y[0]) >= self.capacity:
            del self._x[0], self._t[0], self._y[0]

    def step(self) -> None:
        self._count += 1
        if not self._y or self._count % self.every:
            return
        bx, bt, by = (np.concatenate(a) for a in (self._x, self._t, self._y))
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
        self.updates += 1
