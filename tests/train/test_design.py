"""Designs without a daemon: the rule for new data, design files, CSV loading, scaling,
the bypass, the logistic-regression yardstick (against scikit-learn's)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from labd.train import designfile
from labd.train.arch import Arch, Bypass, Standardize, build_network, choose_design
from labd.train.datasets import DataError, fit_scaling, load_csv
from labd.train.yardstick import logistic_regression

SHG = {"name": "shg", "input_dim": 12, "param_dim": 38, "output_dim": 12,
       "input_range": [0.0, 1.0], "param_range": [0.0, 1.0]}
CSV = Path(__file__).resolve().parents[2] / "examples" / "csv"


def test_the_rule_sizes_the_design_from_the_data_and_the_system() -> None:
    blobs = choose_design(4, 10, 1200, SHG)  # the new user: 10 classes x 4 features
    assert (blobs.depth, blobs.units, blobs.hybrid, blobs.readout) == (1, 4, True, "linear")
    assert blobs.scaling == "standard" and blobs.val_fraction > 0 and blobs.patience >= 10
    iris = choose_design(4, 3, 120, SHG)
    assert iris.units == 1 and iris.batch_size == 16
    digits = choose_design(64, 10, 1437, SHG)
    assert digits.units == 6  # as many physical inputs as features
    assert choose_design(500, 10, 10000, SHG).units == 8  # at most MAX_UNITS
    plate = {**SHG, "input_dim": 784, "output_dim": 196}
    assert choose_design(30, 2, 400, plate).units == 1
    # epochs: about TARGET_STEPS steps, within the bounds; more rows -> fewer epochs
    assert 30 <= digits.epochs < iris.epochs <= 400


def test_design_file_round_trip_and_partial_files(tmp_path: Path) -> None:
    arch = choose_design(4, 10, 1200, SHG)
    path = designfile.save(tmp_path / "d.toml", arch, "a comment\non two lines")
    text = path.read_text()
    assert text.startswith("# a comment\n# on two lines\n[design]\n")
    assert designfile.load(path, Arch()) == arch  # complete: the base does not matter
    (tmp_path / "p.toml").write_text("[design]\ndepth = 2\ntwin_hidden = [64]\n"
                                     "twin_family = 'mlp'\nlr = 1\n")
    partial = designfile.load(tmp_path / "p.toml", arch)
    assert partial == replace(arch, depth=2, twin_hidden=(64,), twin_family="mlp", lr=1.0)


@pytest.mark.parametrize(("text", "message"), [
    ("[design]\ndepht = 2\n", "unknown design key"),
    ("[design]\nreadout = 'sum'\n", "must be one of"),
    ("[design]\nunits = 1.5\n", "whole number"),
    ("[design]\nhybrid = 1\n", "true or false"),
    ("[design]\ntwin_hidden = []\n", "positive whole numbers"),
    ("[design]\nval_fraction = 0\npatience = 5\n", "needs a validation split"),
    ("depth = 2\n", "needs a [design] table"),
    ("[design\n", "not valid TOML"),
])
def test_bad_design_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(designfile.DesignError, match=message.replace("[", r"\[")):
        designfile.load(tmp_path / "bad.toml", Arch())
    with pytest.raises(designfile.DesignError, match="cannot read"):
        designfile.load(tmp_path / "missing.toml", Arch())


def test_csv_split_is_stratified_and_labels_may_be_names(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    rows = [f"{i},{i * 2.5},{['setosa', 'virginica', 'versicolor'][i % 3]}" for i in range(60)]
    path.write_text("a,b,label\n" + "\n".join(rows) + "\n")
    d = load_csv(path)
    assert d.classes == ["setosa", "versicolor", "virginica"] and d.n_classes == 3
    assert np.bincount(d.y_test).tolist() == [4, 4, 4]  # 20% of each class of 20
    assert d.split == {"test": "stratified random", "test_fraction": 0.2, "test_seed": 0}
    v = d.carve_validation(0.25, seed=1)
    assert np.bincount(v.y_val).tolist() == [4, 4, 4] and len(v.y_train) == 36
    assert v.split["n_validation"] == 12 and len(v.y_test) == 12
    assert d.carve_validation(0.0) is d


@pytest.mark.parametrize(("text", "message"), [
    ("a,label\n1,x\n2,\n", "row 2: empty label"),
    ("a,b,label\n1,,0\n2,3,1\n", "row 1, column 'b'"),
    ("a,label\n1,0\n2,0\n", "at least two classes"),
    ("label,split\n0,train\n", "no feature column"),
])
def test_bad_csv_files_say_where(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        load_csv(tmp_path / "bad.csv")


def test_scaling_is_fitted_on_training_rows_and_travels_with_the_network() -> None:
    x = np.array([[0.0, 10.0, 5.0], [2.0, 30.0, 5.0], [4.0, 20.0, 5.0]], np.float32)
    standard = fit_scaling(x, "standard")
    z = Standardize(standard)(torch.from_numpy(x))
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=1e-6, rtol=0)
    assert float(z[:, 2].abs().max()) == 0.0  # a constant feature: scale 1, no division by 0
    minmax = Standardize(fit_scaling(x, "minmax"))(torch.from_numpy(x))
    assert float(minmax[:, :2].min()) == -1.0 and float(minmax[:, :2].max()) == 1.0
    arch = replace(choose_design(3, 2, 100, SHG), depth=1)
    net = build_network(arch, 3, 2, [(SHG, torch.nn.Identity(), None)], bypass=True,
                        scaling=standard)
    assert isinstance(net.blocks[0], Standardize)
    assert torch.equal(net.state_dict()["blocks.0.shift"],
                       torch.tensor(standard["shift"], dtype=torch.float32))


def test_bypass_narrows_by_window_means_and_widens_by_repeating() -> None:
    x = torch.arange(12, dtype=torch.float32).reshape(1, 12)
    assert Bypass(12, 4)(x).tolist() == [[1.0, 4.0, 7.0, 10.0]]
    wide = Bypass(12, 24)(x)  # issue 14: a system with more outputs than inputs
    assert wide.shape == (1, 24) and wide[0, ::2].tolist() == list(range(12))
    two = Bypass(3, 6, units=2)(torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]))
    assert two.tolist() == [[1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]]


@pytest.mark.parametrize("name", ["iris", "wine", "breast_cancer", "blobs10"])
def test_logistic_regression_agrees_with_scikit_learn(name: str) -> None:
    sklearn = pytest.importorskip("sklearn.linear_model")
    d = load_csv(CSV / f"{name}.csv").carve_validation(0.15)
    ours = logistic_regression(d)
    mean, std = d.x_train.mean(0), d.x_train.std(0)
    std[std == 0] = 1
    ref = sklearn.LogisticRegression(max_iter=10000).fit((d.x_train - mean) / std, d.y_train)
    theirs = ref.predict((d.x_test - mean) / std)
    assert abs(ours["test_accuracy"] - float(np.mean(theirs == d.y_test))) <= 1 / len(d.y_test)
    assert ours["val_accuracy"] is not None and ours["train_accuracy"] > 0.7


def test_logistic_regression_fits_a_split_once_per_process() -> None:
    """Runs on the same split (the seeds of one reproduce or tune process) share one fit; any
    other split is fitted anew; a caller may change what it gets without changing the cache."""
    from labd.train import yardstick

    d = load_csv(CSV / "wine.csv").carve_validation(0.15)
    first = logistic_regression(d)
    fits = len(yardstick._FITTED)
    first["test_accuracy"] = -1.0
    again = logistic_regression(d)
    assert len(yardstick._FITTED) == fits and again["test_accuracy"] >= 0.8
    assert again["iterations"] <= 100
    logistic_regression(load_csv(CSV / "wine.csv").carve_validation(0.15, seed=1))
    assert len(yardstick._FITTED) == fits + 1
