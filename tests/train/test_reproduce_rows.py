"""Every row of ``labd reproduce`` runs end to end, as ``labd train`` runs it (the pipelined PAT
trainer), with a tiny budget, against real daemons whose message limit is so small that the
trainer's requests must be split: requests the trainer sizes itself (its chunks, evaluations
and the evaluation drained at the end of a training) and requests the client splits (twin
collection, the plain loop's forwards)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from labd.client import LabClient, forward_rows
from labd.config import default_config_text
from labd.daemon.process import LocalDaemon
from labd.train.reproduce import EXPERIMENTS, Budget, reproduce

#: MNIST subsets of 256 training and 64 test images, one epoch, twins of 200 points.
TINY = Budget((256, 64), {"vowels": 1, "mnist": 1}, {"twin_samples": 200, "twin_epochs": 2})
#: Request limits (bytes): vowels (SHG, 1 unit: 48 bytes a row and a shared theta of 152)
#: get 11 rows a request; MNIST rows (784 inputs and, with several units, 784 parameters a
#: row) 10 rows, the hybrid's (16 SHG units, 200 bytes a row) 325.
LIMITS = {"vowels": 1024, "mnist": 65536}


def _daemon(tmp_path: Path, limit: int) -> LocalDaemon:
    text = default_config_text()
    line = "max_message_bytes = 67108864"
    assert line in text
    config = tmp_path / f"limit-{limit}.toml"
    config.write_text(text.replace(line, f"max_message_bytes = {limit}"))
    return LocalDaemon(config=config)


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LocalDaemon]]:
    folder = tmp_path_factory.mktemp("limits")
    with _daemon(folder, LIMITS["vowels"]) as vowels, _daemon(folder, LIMITS["mnist"]) as mnist:
        yield {"vowels": vowels, "mnist": mnist}


def test_the_limits_force_splitting() -> None:
    """Without sizing, the trainer's requests exceed these limits: a vowel evaluation drained
    in two halves (25 rows), a plate minibatch in two chunks (64 images, 128 rows), one
    chunk of the hybrid design (128 images of 16 units)."""
    assert forward_rows(LIMITS["vowels"], "shg", 12, 38, False) < 25
    assert forward_rows(LIMITS["mnist"], "plate", 784, 784, True) < 128
    assert forward_rows(LIMITS["mnist"], "shg", 12, 38, True) < 128 * 16


@pytest.mark.timeout(600)
@pytest.mark.parametrize("task", ["vowels", "mnist"])
def test_every_row_of_the_reproduction_runs_under_a_small_limit(
        daemons: dict[str, LocalDaemon], task: str, tmp_path: Path) -> None:
    daemon = daemons[task]
    with LabClient(daemon.endpoint) as client:
        assert client.hello()["max_message_bytes"] == LIMITS[task]
    keys = [e.key for e in EXPERIMENTS if e.task == task]
    report = reproduce(tmp_path, seeds=1, endpoint=daemon.endpoint, only=keys,
                       progress=False, budget=TINY)
    results = {r["experiment"]: r for r in report["results"]}
    assert sorted(results) == sorted(keys)
    for key, r in results.items():
        assert 0.0 <= r["test_accuracy"] <= 1.0, key
        assert (Path(r["run_dir"]) / "metrics.csv").exists(), key
        if r["mode"] == "bypass":
            assert r["physical_queries"] == 0, key
            continue
        assert r["physical_queries"] > 0, key
        if r["mode"] == "pat" and not r["refine_twin"]:
            assert r["pipelined"], key  # as `labd train` runs it
    assert results[f"{task}:{'shg' if task == 'vowels' else 'plate'}:pat"]["n_test"] == (
        49 if task == "vowels" else 64)


def test_client_splits_an_oversized_forward(daemons: dict[str, LocalDaemon]) -> None:
    """A forward over the limit goes as parts under it: the same rows in the same order, each
    measured once (the daemon's sequence advances by the rows, one request a part)."""
    import numpy as np

    from labd.client import TooLarge

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (50, 12)).astype(np.float32)
    theta = rng.uniform(-1, 1, (50, 12)).astype(np.float32)
    with LabClient(daemons["vowels"].endpoint) as client:
        most = client.forward_rows("loopback", 12, 12, True)
        assert most is not None and 0 < most < 50
        before = client.status()
        result = client.measure("loopback", x, theta)
        after = client.status()
        np.testing.assert_allclose(result.y, x + theta, rtol=1e-6)  # gain 1
        parts = -(-50 // most)
        assert [rows for _, rows in result.parts] == [50 // parts + (k < 50 % parts)
                                                      for k in range(parts)]
        assert result.seq == result.parts[0][0] == before["next_seq"]
        assert after["next_seq"] - before["next_seq"] == 50
        served = [s["systems"]["loopback"]["served"] for s in (before, after)]
        assert served[1] - served[0] == parts
        # one row of the plate (784 inputs, 784 parameters) cannot fit in 1024 bytes: refused
        # before anything is sent
        with pytest.raises(TooLarge, match="max_message_bytes"):
            client.forward("plate", np.zeros((2, 784), np.float32),
                           np.zeros((2, 784), np.float32))
        assert client.status()["systems"]["plate"]["served"] == 0
