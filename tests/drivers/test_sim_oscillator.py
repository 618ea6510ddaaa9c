"""The simulated oscillator: resonance and distortion of the nominal model and of the stand-in,
gradients, noise, drift, seeding, batching, reality gap and throughput."""

from __future__ import annotations

import numpy as np
import torch

from drivers.physics.encoding import Mapping
from drivers.physics.nominal import nominal_model
from drivers.physics.oscillator import (
    OscillatorPhysics,
    circuit_arrays,
    integrate,
    oscillator_params,
)
from drivers.sim.oscillator import ADC_BITS, ADC_RANGE, OscillatorBench
from tests.drivers.conftest import describe

FS = 1.0e6
F0 = 1 / (2 * np.pi * np.sqrt(1e-3 * 10e-9))  # 50.3 kHz
SWEEP = Mapping(input_dim=1000, param_dim=0, output_dim=1)  # 1 ms of drive


def bench_trace(bench: OscillatorBench, patterns: np.ndarray) -> np.ndarray:
    bench.load(patterns)
    return bench.measure()


def nominal_trace(patterns: np.ndarray, mapping: Mapping = SWEEP) -> np.ndarray:
    with torch.no_grad():
        return OscillatorPhysics(mapping, {})(torch.from_numpy(patterns)).numpy()


def sines(freqs: np.ndarray, volts: float) -> np.ndarray:
    return volts * np.sin(2 * np.pi * np.asarray(freqs)[:, None] * np.arange(1000) / FS)


def steady_amplitude(trace: np.ndarray) -> np.ndarray:
    tail = trace[:, 500:]
    return (tail.max(1) - tail.min(1)) / 2


def harmonic_ratio(trace: np.ndarray, f: float) -> float:
    """Power in harmonics 2-4 over the power at the fundamental, steady state."""
    tail = trace[0, 200:] - trace[0, 200:].mean()
    spectrum = np.abs(np.fft.rfft(tail * np.hanning(tail.size))) ** 2
    bins = np.fft.rfftfreq(tail.size, 1 / FS)

    def power(freq: float) -> float:
        return spectrum[np.abs(bins - freq) < 2500].sum()

    return sum(power(k * f) for k in (2, 3, 4)) / power(f)


def test_small_drive_resonates_near_one_over_two_pi_root_lc() -> None:
    freqs = np.linspace(30e3, 75e3, 91)
    amp = steady_amplitude(nominal_trace(sines(freqs, 0.01)))
    assert abs(freqs[np.argmax(amp)] / F0 - 1) < 0.03
    assert 2.5 < amp.max() / 0.01 < 4  # Q = sqrt(L/C) / R = 3.2


def test_stand_in_resonates_near_its_hidden_lc() -> None:
    bench = OscillatorBench(SWEEP, {}, seed=3, noise=0.0)
    hidden = bench.hidden()
    f_hidden = 1 / (2 * np.pi * np.sqrt(hidden["L"] * hidden["C"]))
    freqs = np.linspace(30e3, 75e3, 91)
    amp = steady_amplitude(bench_trace(bench, sines(freqs, 0.01)))
    assert abs(freqs[np.argmax(amp)] / f_hidden - 1) < 0.03


def test_large_drive_distorts() -> None:
    f = 25e3
    small = harmonic_ratio(nominal_trace(sines([f], 0.01)), f)
    large = harmonic_ratio(nominal_trace(sines([f], 1.0)), f)
    assert small < 0.01 < 0.05 < large, (small, large)
    bench = OscillatorBench(SWEEP, {}, seed=1, noise=0.0)
    assert harmonic_ratio(bench_trace(bench, sines([f], 1.0)), f) > 0.05


def test_gradient_is_the_exact_adjoint() -> None:
    mapping = Mapping(input_dim=8, param_dim=0, output_dim=1)
    physics = OscillatorPhysics(mapping, {"substeps": 4})
    drive = (torch.rand(3, 8, dtype=torch.float64) * 1.5 - 0.3).requires_grad_()
    assert torch.autograd.gradcheck(physics, (drive,), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_ideal_stand_in_reproduces_the_nominal_model() -> None:
    bench = OscillatorBench(SWEEP, {}, seed=5, noise=0.0, imperfection=0.0)
    p = np.random.default_rng(1).uniform(-1, 2, (4, 1000))
    np.testing.assert_allclose(bench_trace(bench, p), nominal_trace(p), rtol=1e-9, atol=1e-12)


def test_same_seed_same_device_other_seed_other_device() -> None:
    a, b, c = (OscillatorBench(SWEEP, {}, seed=s) for s in (7, 7, 8))
    assert a.hidden() == b.hidden()
    assert a.hidden()["L"] != c.hidden()["L"]
    p = np.full((2, 1000), 0.3)
    np.testing.assert_array_equal(bench_trace(a, p), bench_trace(b, p))


def mid_range(system, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((batch, system.input_dim)), rng.uniform(-0.5, 0.5, system.param_dim)


def test_repeated_shots_differ_by_one_to_five_percent(sim_system, sim_rig, sim_measure) -> None:
    system = sim_system("oscillator")
    x, theta = mid_range(system, 1)
    y = system.decode(sim_measure(sim_rig(system, "oscillator"),
                                  system.encode(np.repeat(x, 100, 0), theta)))
    # bins that carry signal (the first windows of a trace, before the system has responded,
    # hold almost none, and their relative noise says nothing about the detector)
    signal = y.mean(0) > 0.1 * y.mean(0).max()
    rel = y.std(0)[signal] / y.mean(0)[signal]
    print(f"oscillator relative std per bin: median {np.median(rel):.4f}, max {rel.max():.4f}")
    assert 0.01 < np.median(rel) < 0.05
    assert np.all(rel < 0.1)


def test_temperature_drift_is_a_few_percent_over_tens_of_minutes(sim_system, sim_rig,
                                                           sim_measure) -> None:
    system = sim_system("oscillator")
    drive, detector = sim_rig(system, "oscillator", noise=0.0)
    x, theta = mid_range(system, 1)
    patterns = system.encode(x, theta)
    first = system.decode(sim_measure((drive, detector), patterns))
    changes = []
    for minute in (5, 10, 20, 30, 40):
        drive.bench.shots = int(minute * 60 / drive.bench.shot_s)
        y = system.decode(sim_measure((drive, detector), patterns))
        changes.append(np.linalg.norm(y - first) / np.linalg.norm(first))
    print(f"oscillator drift vs t=0 at 5/10/20/30/40 min: {np.round(changes, 4)}")
    assert 0.01 < max(changes) < 0.1  # a few % over tens of minutes


def test_a_batch_gives_what_single_shots_give() -> None:
    p = np.random.default_rng(3).uniform(-1, 2, (6, 1000))
    batched = bench_trace(OscillatorBench(SWEEP, {}, seed=2, noise=0.0), p)
    single = OscillatorBench(SWEEP, {}, seed=2, noise=0.0)
    one_by_one = np.concatenate([bench_trace(single, p[i:i + 1]) for i in range(6)])
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-9, atol=1e-12)
    noisy = bench_trace(OscillatorBench(SWEEP, {}, seed=2), p)
    assert np.linalg.norm(noisy - batched) < 0.1 * np.linalg.norm(batched)


def test_shots_integrated_together_are_each_integrated_alone() -> None:
    """``integrate`` interleaves shots in groups (a short last one here): every shot's
    voltages, and the states kept for the adjoint, are those of the shot alone, to the bit."""
    rng = np.random.default_rng(4)
    drive = rng.uniform(-1, 3, (6, 120))
    arrays = {k: v * rng.uniform(0.8, 1.2, 6) for k, v in
              circuit_arrays(oscillator_params({}), 6).items()}
    states = np.empty((2, 6, 120 * 3 + 1))
    together = integrate(drive, dt=1e-7, substeps=3, states=states, **arrays)
    for s in range(6):
        alone_states = np.empty((2, 1, 120 * 3 + 1))
        alone = integrate(drive[s:s + 1], dt=1e-7, substeps=3, states=alone_states,
                          **{k: v[s:s + 1] for k, v in arrays.items()})
        np.testing.assert_array_equal(together[s], alone[0])
        np.testing.assert_array_equal(states[:, s], alone_states[:, 0])


def test_noise_and_adc_are_the_documented_stream() -> None:
    """An ideal bench (no tolerances, no drift) with noise: the reference jitter, the DAC's hiss
    and the ADC's hiss, drawn from the noise stream in that order, and the 14-bit ADC, to the
    bit."""
    bench = OscillatorBench(SWEEP, {}, seed=6, imperfection=0.0)
    p = np.random.default_rng(2).uniform(-1, 2, (5, 1000)).astype(np.float32)
    measured = bench_trace(bench, p)
    params = oscillator_params({})
    rng = np.random.default_rng([6, 1])
    drive = p * (1 + 0.015 * rng.standard_normal((5, 1))) + 0.0015 * rng.standard_normal(p.shape)
    v = integrate(drive, dt=1 / (FS * params["substeps"]), substeps=params["substeps"],
                  states=np.empty((0, 0, 0)), **circuit_arrays(params, 5))
    lsb = 2 * ADC_RANGE / 2 ** ADC_BITS
    read = v + 0.001 * rng.standard_normal(p.shape)
    expected = np.clip(np.round(read / lsb) * lsb, -ADC_RANGE, ADC_RANGE - lsb)
    np.testing.assert_array_equal(measured, expected)


def test_reality_gap_of_the_default_system(sim_system, sim_rig, sim_measure, sim_nominal,
                                           sim_gaps) -> None:
    """Band 1-30 % of the output, 15-60 % of its input-dependent spread: the circuit's errors
    (gains, offsets, a resonance a few % off) move every output alike, so on random inputs,
    whose RMS outputs vary little, the error is best judged against the spread."""
    system = sim_system("oscillator")
    x, theta = mid_range(system, 128, seed=4)
    y_sim = system.decode(sim_measure(sim_rig(system, "oscillator", noise=0.0),
                                      system.encode(x, theta)))
    y_nom = sim_nominal(system, x, theta)
    gap, spread = (f(y_sim, y_nom) for f in sim_gaps)
    print(f"oscillator reality gap {gap:.3f} (relative to the spread {spread:.3f})")
    assert 0.01 < gap < 0.3
    assert 0.15 < spread < 0.6
    assert 0.05 < y_sim.mean() < 2


def test_default_system_builds_and_is_fast(sim_system, sim_rig, sim_measure,
                                           sim_throughput) -> None:
    system = sim_system("oscillator")
    rig = sim_rig(system, "oscillator")
    x, theta = mid_range(system, 256)
    patterns = system.encode(x, theta)
    trace = sim_measure(rig, patterns[:3])
    assert trace.shape == (3, 784) and np.all(np.isfinite(trace))
    rate = sim_throughput(rig, patterns)
    print(f"oscillator stand-in: {rate:,.0f} shots/s at batch 256")
    assert rate > 400


def test_nominal_model_trains_fast_enough(sim_system) -> None:
    import time

    model = nominal_model(describe(sim_system("oscillator")))
    x = torch.rand(64, 784)
    theta = (torch.rand(784) - 0.5).requires_grad_()
    model(x, theta).square().sum().backward()  # warm up
    started = time.perf_counter()
    y = model(x, theta)
    y.square().sum().backward()
    elapsed = time.perf_counter() - started
    print(f"oscillator nominal model: forward + backward of 64 in {elapsed * 1e3:.1f} ms")
    assert torch.isfinite(theta.grad).all() and theta.grad.abs().sum() > 0
    assert elapsed < 1.0
