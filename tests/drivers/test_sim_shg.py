"""The simulated SHG system: physics of the nominal model and of the stand-in, noise, drift,
seeding, batching, reality gap and throughput."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from drivers.physics.encoding import Mapping
from drivers.physics.nominal import nominal_model
from drivers.physics.shg import ShgPhysics
from drivers.sim.shg import ShgBench
from tests.drivers.conftest import describe

MAPPING = Mapping(input_dim=12, param_dim=38, output_dim=12)
FULL_BAND = {"pixels": 99, "window": 1.0}  # one pixel per SH frequency, whole band


def bench_trace(bench: ShgBench, patterns: np.ndarray) -> np.ndarray:
    bench.load(patterns)
    return bench.measure()


def rms_width(spectrum: np.ndarray) -> float:
    m = np.arange(spectrum.size)
    p = spectrum / spectrum.sum()
    mean = (m * p).sum()
    return float(np.sqrt(((m - mean) ** 2 * p).sum()))


def test_nominal_sh_power_scales_as_fourth_power_of_field() -> None:
    physics = ShgPhysics(MAPPING, FULL_BAND)
    c = torch.rand(1, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    base = physics(c)
    for a in (0.25, 0.5, 0.8):
        torch.testing.assert_close(physics(a * c), a ** 4 * base, rtol=1e-9, atol=1e-9)


def test_stand_in_sh_power_scales_about_as_fourth_power() -> None:
    bench = ShgBench(MAPPING, FULL_BAND, seed=3, noise=0.0)
    c = np.random.default_rng(0).uniform(0.5, 1.0, (1, 50))
    amps = np.array([0.4, 0.6, 0.8, 1.0])
    totals = [(bench_trace(bench, a * c) - bench.device["dark"]).sum() for a in amps]
    slope = np.polyfit(np.log(amps), np.log(totals), 1)[0]
    assert 3.5 < slope < 4.6, slope


@pytest.mark.parametrize("stand_in", [False, True])
def test_sh_spectrum_narrows_when_the_input_spectrum_is_cut(stand_in: bool) -> None:
    full = np.ones((1, 50))
    cut = np.zeros((1, 50))
    cut[0, 10:20] = 1.0  # ten channels around the source's centre (0.3 of the span)
    if stand_in:
        bench = ShgBench(MAPPING, FULL_BAND, seed=1, noise=0.0)
        spectra = [bench_trace(bench, p)[0] - bench.device["dark"] for p in (full, cut)]
    else:
        physics = ShgPhysics(MAPPING, FULL_BAND)
        spectra = [physics(torch.from_numpy(p))[0].numpy() for p in (full, cut)]
    assert rms_width(spectra[1]) < 0.6 * rms_width(spectra[0])


def test_ideal_stand_in_reproduces_the_nominal_model() -> None:
    physics = ShgPhysics(MAPPING, {"pixels": 96})
    bench = ShgBench(MAPPING, {"pixels": 96}, seed=5, noise=0.0, imperfection=0.0)
    c = np.random.default_rng(1).random((16, 50))
    # the bench computes in single precision: equal to float32 rounding
    np.testing.assert_allclose(bench_trace(bench, c), physics(torch.from_numpy(c)).numpy(),
                               rtol=2e-5, atol=1e-3)


def test_same_seed_same_device_other_seed_other_device() -> None:
    a, b, c = (ShgBench(MAPPING, {}, seed=s) for s in (7, 7, 8))
    for key, value in a.hidden().items():
        np.testing.assert_array_equal(value, b.hidden()[key])
    assert not np.allclose(a.hidden()["phase"], c.hidden()["phase"])
    p = np.full((4, 50), 0.5)
    np.testing.assert_array_equal(bench_trace(a, p), bench_trace(b, p))  # noise seeded too


def test_repeated_shots_differ_by_one_to_five_percent(sim_system, sim_rig, sim_measure) -> None:
    system = sim_system("shg")
    rig = sim_rig(system, "shg")
    x = np.random.default_rng(2).uniform(0.25, 1.0, (1, 12))
    patterns = system.encode(np.repeat(x, 200, 0), np.full(38, 0.5))
    y = system.decode(sim_measure(rig, patterns))
    rel = y.std(0) / y.mean(0)
    print(f"SHG relative std per bin: {np.round(rel, 4)}")
    assert 0.01 < np.median(rel) < 0.05
    assert np.all(rel < 0.08)


def test_laser_drift_is_about_one_percent_over_minutes() -> None:
    bench = ShgBench(MAPPING, {}, seed=1, noise=0.0)
    p = np.full((1, 50), 0.6)
    first = bench_trace(bench, p).sum()
    totals = []
    for minute in range(1, 31):
        bench.shots = int(minute * 60 / bench.shot_s)
        totals.append(bench_trace(bench, p).sum())
    change = np.abs(np.array(totals) / first - 1)
    print(f"SHG drift over 30 min: max {change.max():.4f}, at 5 min {change[4]:.4f}")
    assert 0.003 < change.max() < 0.06
    # a batch is B shots: identical patterns in one batch see the drift advance
    bench.shots = 0
    batch = bench_trace(bench, np.repeat(p, 120_000, 0)).sum(1)
    assert batch[-1] != batch[0]


def test_a_batch_gives_what_single_shots_give() -> None:
    c = np.random.default_rng(3).random((8, 50))
    batched = bench_trace(ShgBench(MAPPING, {}, seed=2, noise=0.0), c)
    single = ShgBench(MAPPING, {}, seed=2, noise=0.0)
    one_by_one = np.concatenate([bench_trace(single, c[i:i + 1]) for i in range(8)])
    np.testing.assert_allclose(batched, one_by_one, rtol=2e-5)  # float32 rounding
    noisy = bench_trace(ShgBench(MAPPING, {}, seed=2), c)
    assert np.abs(noisy - batched).max() < 0.2 * batched.max()


def test_reality_gap_of_the_default_system(sim_system, sim_rig, sim_measure, sim_nominal,
                                           sim_gaps) -> None:
    """Band 5-40 %: large enough that in-silico training loses accuracy on the stand-in,
    small enough that the nominal model stays a useful prior for a digital twin."""
    system = sim_system("shg")
    rng = np.random.default_rng(4)
    x, theta = rng.uniform(0.25, 1.0, (256, 12)), rng.random(38)
    y_sim = system.decode(sim_measure(sim_rig(system, "shg", noise=0.0),
                                      system.encode(x, theta)))
    y_nom = sim_nominal(system, x, theta)
    gap, spread = (f(y_sim, y_nom) for f in sim_gaps)
    print(f"SHG reality gap {gap:.3f} (relative to the spread {spread:.3f})")
    assert 0.05 < gap < 0.4
    assert np.all(np.isfinite(y_nom)) and 0.05 < y_sim.mean() < 2


def test_default_system_builds_and_is_fast(sim_system, sim_rig, sim_measure,
                                           sim_throughput) -> None:
    system = sim_system("shg")
    rig = sim_rig(system, "shg")
    patterns = system.encode(np.random.default_rng(5).random((1024, 12)), np.full(38, 0.5))
    trace = sim_measure(rig, patterns[:3])
    assert trace.shape == (3, 96) and np.all(np.isfinite(trace))
    rate = sim_throughput(rig, patterns, repeats=20)  # best of 20: the box is shared
    print(f"SHG stand-in: {rate:,.0f} shots/s at batch 1024")
    assert rate > 10_000


def test_nominal_model_is_differentiable_in_x_and_theta(sim_system) -> None:
    model = nominal_model(describe(sim_system("shg")))
    x = torch.rand(64, 12, requires_grad=True)
    theta = torch.rand(38, requires_grad=True)
    model(x, theta).square().sum().backward()
    assert x.grad.abs().min() > 0 and theta.grad.abs().min() > 0


def test_realtime_shots_start_when_the_drive_plays_them():
    """In realtime timing the shots run from ``load`` (the drive's output) on, like a triggered
    acquisition: work done between output and read overlaps them, and ``measure`` returns
    ``B * shot_s`` after ``load``, not after itself was called."""
    bench = ShgBench(mapping=MAPPING, physics={}, seed=0, timing="realtime", shot_s=0.02)
    patterns = np.full((5, MAPPING.channels), 0.5)
    for meanwhile_s in (0.0, 0.06):
        started = time.perf_counter()
        bench.load(patterns)
        time.sleep(meanwhile_s)  # the caller's own work while the 5 x 20 ms shots run
        bench.measure()
        took = time.perf_counter() - started
        assert 0.1 <= took < 0.1 + 0.05, (meanwhile_s, took)
