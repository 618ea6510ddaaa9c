"""The simulated plate: modal resonances and ring-down of the nominal model and of the
stand-in, noise, drift, seeding, batching, reality gap and throughput."""

from __future__ import annotations

import numpy as np
import torch

from drivers.physics.encoding import Mapping
from drivers.physics.nominal import nominal_model
from drivers.physics.plate import (
    PlatePhysics,
    highpass,
    highpass_alpha,
    mode_coefficients,
    plate_params,
    respond,
)
from drivers.sim.plate import ADC_BITS, ADC_RANGE, PlateBench
from tests.drivers.conftest import describe

FS = 48000.0
SWEEP = Mapping(input_dim=4800, param_dim=0, output_dim=1)  # 0.1 s of drive
ONE_MODE = {"freqs": [500.0], "zetas": [0.01], "drive_coupling": [1.0],
            "sensor_coupling": [1.0]}


def bench_trace(bench: PlateBench, patterns: np.ndarray) -> np.ndarray:
    bench.load(patterns)
    return bench.measure()


def sine_response(respond, freqs: np.ndarray, volts: float = 0.05) -> np.ndarray:
    """Steady-state RMS of the sensor (last half of the trace) for sine drives."""
    t = np.arange(SWEEP.input_dim) / FS
    trace = respond(volts * np.sin(2 * np.pi * freqs[:, None] * t))
    return np.sqrt((trace[:, trace.shape[1] // 2:] ** 2).mean(1))


def strongest_peaks(freqs: np.ndarray, response: np.ndarray, count: int) -> np.ndarray:
    local = (response[1:-1] > response[:-2]) & (response[1:-1] > response[2:])
    idx = np.flatnonzero(local) + 1
    return freqs[idx[np.argsort(response[idx])[-count:]]]


def sweep_freqs() -> np.ndarray:
    return np.geomspace(120, 2600, 700)


def test_nominal_plate_answers_most_strongly_at_its_modes() -> None:
    physics = PlatePhysics(SWEEP, {})
    freqs = sweep_freqs()
    resp = sine_response(lambda p: physics(torch.from_numpy(p)).numpy(), freqs)
    modes = plate_params({})["freqs"]
    for peak in strongest_peaks(freqs, resp, 5):
        assert np.min(np.abs(modes / peak - 1)) < 0.006, peak


def test_stand_in_resonates_at_its_hidden_modes() -> None:
    bench = PlateBench(SWEEP, {}, seed=2, noise=0.0)
    freqs = sweep_freqs()
    resp = sine_response(lambda p: bench_trace(bench, p), freqs, volts=0.01)
    modes = bench.hidden()["freqs"]
    for peak in strongest_peaks(freqs, resp, 5):
        assert np.min(np.abs(modes / peak - 1)) < 0.006, peak


def decay_rate(trace: np.ndarray) -> float:
    """Exponential decay rate (1/s) of a ringing trace from the peaks of |trace|."""
    a = np.abs(trace)
    peaks = np.flatnonzero((a[1:-1] > a[:-2]) & (a[1:-1] >= a[2:])) + 1
    peaks = peaks[a[peaks] > 1e-3 * a.max()]
    return -np.polyfit(peaks / FS, np.log(a[peaks]), 1)[0]


def test_rings_down_at_the_modal_damping() -> None:
    ring = Mapping(input_dim=2400, param_dim=0, output_dim=1)
    pulse = np.zeros((1, 2400))
    pulse[0, 0] = 1.0
    nominal = PlatePhysics(ring, ONE_MODE)(torch.from_numpy(pulse)).numpy()[0]
    expected = 0.01 * 2 * np.pi * 500
    assert abs(decay_rate(nominal[1:]) / expected - 1) < 0.03
    bench = PlateBench(ring, ONE_MODE, seed=4, noise=0.0)
    hidden = bench.hidden()
    measured = decay_rate(bench_trace(bench, 0.05 * pulse)[0, 1:])
    assert abs(measured / (hidden["zetas"][0] * 2 * np.pi * hidden["freqs"][0]) - 1) < 0.05


def test_ideal_stand_in_reproduces_the_nominal_model() -> None:
    mapping = Mapping(input_dim=300, param_dim=300, output_dim=10, encoding={"layout": "add"})
    physics = PlatePhysics(mapping, {})
    bench = PlateBench(mapping, {}, seed=5, noise=0.0, imperfection=0.0)
    p = np.random.default_rng(1).uniform(-1, 1, (8, 300))
    np.testing.assert_allclose(bench_trace(bench, p), physics(torch.from_numpy(p)).numpy(),
                               rtol=1e-7, atol=1e-9)


def test_same_seed_same_device_other_seed_other_device() -> None:
    a, b, c = (PlateBench(SWEEP, {}, seed=s) for s in (7, 7, 8))
    for key, value in a.hidden().items():
        np.testing.assert_array_equal(value, b.hidden()[key])
    assert not np.allclose(a.hidden()["freqs"], c.hidden()["freqs"])
    p = np.full((2, 4800), 0.3)
    np.testing.assert_array_equal(bench_trace(a, p), bench_trace(b, p))


def plain_respond(force: np.ndarray, coef: np.ndarray, b: np.ndarray, c: np.ndarray,
                  beta: np.ndarray) -> np.ndarray:
    """The modal recursion written as the plainest loop: shot by shot, sample by sample, mode
    by mode, the acceleration summed as it goes."""
    out = np.empty(force.shape)
    for s in range(force.shape[0]):
        q = [0.0] * len(b)
        p = [0.0] * len(b)
        for n in range(force.shape[1]):
            acc = 0.0
            for k in range(len(b)):
                phi11, phi12, phi21, phi22, w2, damp = (float(v) for v in coef[s, k])
                f = b[k] * force[s, n] - beta[k] * q[k] * q[k] * q[k]
                acc += c[k] * (f - damp * p[k] - w2 * q[k])
                rest = f * (1.0 / w2)
                dq = q[k] - rest
                q[k], p[k] = rest + phi11 * dq + phi12 * p[k], phi21 * dq + phi22 * p[k]
            out[s, n] = acc
    return out


def test_modal_recursion_is_the_plain_loop_to_the_bit() -> None:
    """``respond`` advances the modes as vectors and sums them afterwards: the same numbers."""
    rng = np.random.default_rng(0)
    shots, samples, modes = 5, 60, 6
    coef = mode_coefficients(rng.uniform(100, 3000, (shots, modes)),
                             rng.uniform(0.005, 0.05, modes), 1 / FS)
    b, c = rng.standard_normal(modes), rng.standard_normal(modes)
    beta = rng.uniform(0, 1e9, modes)
    force = rng.standard_normal((shots, samples))
    np.testing.assert_array_equal(respond(force, coef, b, c, beta),
                                  plain_respond(force, coef, b, c, beta))


def test_noise_and_adc_are_the_documented_stream() -> None:
    """An ideal bench (no saturation, no drift) with noise: the per-shot gain, then the float32
    hiss, drawn from the noise stream in that order, and the 16-bit ADC, to the bit."""
    mapping = Mapping(input_dim=200, param_dim=200, output_dim=10, encoding={"layout": "add"})
    bench = PlateBench(mapping, {}, seed=6, imperfection=0.0)
    p = np.random.default_rng(2).uniform(-1, 2, (5, 200)).astype(np.float32)
    measured = bench_trace(bench, p)
    nominal = plate_params({})
    rng = np.random.default_rng([6, 1])
    gain = nominal["gain"] * (1 + 0.01 * rng.standard_normal((5, 1)))
    hiss = 0.005 * rng.standard_normal(p.shape, dtype=np.float32)
    coef = mode_coefficients(np.repeat(nominal["freqs"][None], 5, 0), nominal["zetas"][None],
                             1 / FS)
    force = highpass(p.astype(np.float64), highpass_alpha(nominal["highpass_hz"], FS))
    acc = respond(force, coef, nominal["drive_coupling"], nominal["sensor_coupling"],
                  np.zeros(len(nominal["freqs"]))) * gain + hiss
    lsb = 2 * ADC_RANGE / 2 ** ADC_BITS
    expected = np.clip(np.round(acc / lsb), -2 ** (ADC_BITS - 1), 2 ** (ADC_BITS - 1) - 1) * lsb
    np.testing.assert_array_equal(measured, expected)


def mid_range(system, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((batch, system.input_dim)), rng.uniform(-0.5, 0.5, system.param_dim)


def test_repeated_shots_differ_by_one_to_five_percent(sim_system, sim_rig, sim_measure) -> None:
    system = sim_system("plate")
    x, theta = mid_range(system, 1)
    y = system.decode(sim_measure(sim_rig(system, "plate"),
                                  system.encode(np.repeat(x, 100, 0), theta)))
    # bins that carry signal (the first windows of a trace, before the system has responded,
    # hold almost none, and their relative noise says nothing about the detector)
    signal = y.mean(0) > 0.1 * y.mean(0).max()
    rel = y.std(0)[signal] / y.mean(0)[signal]
    print(f"plate relative std per bin: median {np.median(rel):.4f}, max {rel.max():.4f}")
    assert 0.01 < np.median(rel) < 0.05
    assert np.all(rel < 0.1)


def test_temperature_drift_is_a_few_percent_over_tens_of_minutes(sim_system, sim_rig,
                                                                 sim_measure) -> None:
    system = sim_system("plate")
    drive, detector = sim_rig(system, "plate", noise=0.0)
    x, theta = mid_range(system, 1)
    patterns = system.encode(x, theta)
    first = system.decode(sim_measure((drive, detector), patterns))
    changes = []
    for minute in (5, 10, 20, 30, 40):
        drive.bench.shots = int(minute * 60 / drive.bench.shot_s)
        y = system.decode(sim_measure((drive, detector), patterns))
        changes.append(np.linalg.norm(y - first) / np.linalg.norm(first))
    print(f"plate drift vs t=0 at 5/10/20/30/40 min: {np.round(changes, 4)}")
    assert 0.01 < max(changes) < 0.1


def test_a_batch_gives_what_single_shots_give() -> None:
    mapping = Mapping(input_dim=400, param_dim=400, output_dim=10, encoding={"layout": "add"})
    p = np.random.default_rng(3).uniform(-1, 2, (6, 400))
    batched = bench_trace(PlateBench(mapping, {}, seed=2, noise=0.0), p)
    single = PlateBench(mapping, {}, seed=2, noise=0.0)
    one_by_one = np.concatenate([bench_trace(single, p[i:i + 1]) for i in range(6)])
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-9, atol=1e-12)
    noisy = mapping.decode(bench_trace(PlateBench(mapping, {}, seed=2), p))
    clean = mapping.decode(batched)
    assert np.linalg.norm(noisy - clean) < 0.1 * np.linalg.norm(clean)


def test_reality_gap_of_the_default_system(sim_system, sim_rig, sim_measure, sim_nominal,
                                           sim_gaps) -> None:
    """Band 10-40 % (see test_sim_shg): the plate's sharp modes make a 1 % frequency error
    matter, so the gap sits in the upper half."""
    system = sim_system("plate")
    x, theta = mid_range(system, 128, seed=4)
    y_sim = system.decode(sim_measure(sim_rig(system, "plate", noise=0.0),
                                      system.encode(x, theta)))
    y_nom = sim_nominal(system, x, theta)
    gap, spread = (f(y_sim, y_nom) for f in sim_gaps)
    print(f"plate reality gap {gap:.3f} (relative to the spread {spread:.3f})")
    assert 0.1 < gap < 0.4
    assert 0.05 < y_sim.mean() < 2


def test_default_system_builds_and_is_fast(sim_system, sim_rig, sim_measure,
                                           sim_throughput) -> None:
    system = sim_system("plate")
    rig = sim_rig(system, "plate")
    x, theta = mid_range(system, 256)
    patterns = system.encode(x, theta)
    trace = sim_measure(rig, patterns[:3])
    assert trace.shape == (3, 1568) and np.all(np.isfinite(trace))
    rate = sim_throughput(rig, patterns)
    print(f"plate stand-in: {rate:,.0f} shots/s at batch 256")
    assert rate > 400


def test_nominal_model_is_differentiable_and_depends_on_x_and_theta(sim_system) -> None:
    model = nominal_model(describe(sim_system("plate")))
    x = torch.rand(64, 784, requires_grad=True)
    theta = (torch.rand(784) - 0.5).requires_grad_()
    y = model(x, theta)
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert theta.grad.abs().sum() > 0
    assert 0.05 < float(y.detach().mean()) < 2
