"""``labd.nn``, the Python API for a researcher's own network: real daemons, real sockets."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import labd.nn as pnn
from labd.client import ReplyTimeout, Unauthorized
from labd.daemon.process import LocalDaemon
from tests.configs import loopback, table

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, check=False)


def test_the_public_module_is_the_trainers_own_parts() -> None:
    """One door, not a second implementation: the names are labd.train's objects."""
    from labd.train import hardware, layers, twins

    assert pnn.PhysicalLayer is layers.PhysicalLayer and pnn.PATFunction is layers.PATFunction
    assert pnn.fit_twin is twins.fit_twin and pnn.connect is hardware.connect
    assert all(hasattr(pnn, name) for name in pnn.__all__)


def test_a_notebook_session_prints_nothing_and_installs_no_handler(daemon: LocalDaemon) -> None:
    """Import, connect, collect, fit, save, load and a PAT step, as a notebook cell runs them
    (no logging configured): nothing on stdout or stderr, no logging handler anywhere."""
    done = _python(f"""
        import logging, tempfile, torch
        import labd.nn as pnn
        loggers = [logging.getLogger(), *(logging.getLogger(name) for name in
                                          logging.Logger.manager.loggerDict
                                          if name.startswith(("labd", "drivers")))]
        assert not any(logger.handlers for logger in loggers), loggers
        with pnn.connect("{daemon.endpoint}", "shg") as shg:
            twin, report = pnn.fit_twin(pnn.collect(shg, 300, 2), epochs=2)
            path = tempfile.mkdtemp() + "/twin.pt"
            pnn.save_twin(path, twin, report)
            layer = pnn.PhysicalLayer(shg, path)
            y = layer(torch.rand(5, shg.input_dim, requires_grad=True))
            y.sum().backward()
            assert layer.raw_theta.grad is not None and shg.queries == 600 + 5
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""


def test_custom_network_example_trains_with_pat(daemon: LocalDaemon) -> None:
    """examples/custom_network.py (linear, SHG, conv, SHG, readout of both) on a real daemon:
    it learns the vowels well above chance (1/7), every physical forward measured."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "custom_network.py"), "--endpoint",
         daemon.endpoint, "--epochs", "20", "--twin-samples", "2000", "--twin-epochs", "8"],
        capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    final = done.stdout.strip().splitlines()[-1]
    assert final.startswith("final: test "), done.stdout
    test_acc = float(final.split()[2].rstrip(","))
    assert test_acc > 0.45, done.stdout
    shots = int(final.split()[5])
    # the twin's 2000 points x 2, then per epoch two layers over the 210 training vowels
    assert shots >= 4000 + 20 * 2 * 210, done.stdout


def test_pat_wraps_any_callable_experiment() -> None:
    """``pat(experiment, model)``: the experiment's y forward (called once, on detached
    tensors), the model's vector-Jacobian product at that point backward, dL/dy at the
    measured y, gradients to x and theta."""
    calls = []

    def experiment(x: torch.Tensor, theta: torch.Tensor) -> np.ndarray:  # e.g. an instrument
        calls.append(x.requires_grad)
        return (np.tanh(x.numpy() * 1.1 + theta.numpy()) + 0.05).astype(np.float32)

    def model(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x + theta)

    x = torch.rand(6, 3, requires_grad=True)
    theta = torch.rand(3, requires_grad=True)
    y = pnn.pat(experiment, model)(x, theta)
    assert calls == [False]
    np.testing.assert_allclose(y.detach().numpy(), experiment(x.detach(), theta.detach()))
    (y ** 2).sum().backward()
    xr, tr = x.detach().requires_grad_(), theta.detach().requires_grad_()
    gx, gt = torch.autograd.grad(model(xr, tr), (xr, tr), 2 * y.detach())
    torch.testing.assert_close(x.grad, gx)
    torch.testing.assert_close(theta.grad, gt)
    fixed = torch.rand(3)  # parameters that do not train get no gradient, and need none
    x.grad = None
    pnn.pat(experiment, model)(x, fixed).sum().backward()
    assert x.grad is not None


def test_a_physical_layer_takes_a_twin_a_file_the_nominal_model_or_any_callable(
        daemon: LocalDaemon, tmp_path: Path) -> None:
    with pnn.connect(daemon.endpoint, "loopback") as lb:
        data = pnn.collect(lb, 400, 1)
        twin, report = pnn.fit_twin(data, family="mlp", epochs=3)
        pnn.save_twin(tmp_path / "lb.pt", twin, report)
        x = torch.rand(4, lb.input_dim) * 2 - 1
        nominal = pnn.nominal_model(lb.description)
        for spec in (twin, tmp_path / "lb.pt", str(tmp_path / "lb.pt"), "nominal",
                     lambda x, theta: x + theta):
            layer = pnn.PhysicalLayer(lb, spec)
            layer.path = "model"
            expected = spec if callable(spec) else (
                nominal if spec == "nominal" else pnn.load_twin(spec))
            torch.testing.assert_close(layer(x), expected(x, layer.theta()[0]))
        assert "system='loopback'" in repr(pnn.PhysicalLayer(lb, "nominal"))
        with pytest.raises(ValueError, match=r"takes \[batch, 24\] inputs, got \[4, 12\]"):
            pnn.PhysicalLayer(lb, "nominal", units=2)(x)
        assert lb.queries == 400


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("keys")
    labd = [sys.executable, "-m", "labd"]
    for argv in (["keys", "server", d / "server"], ["keys", "client", "alice", d / "alice"],
                 ["keys", "add", "alice", d / "alice" / "alice.key", "--clients",
                  d / "clients.toml"]):
        subprocess.run([*labd, *map(str, argv)], check=True, capture_output=True, timeout=60)
    return d


@pytest.fixture(scope="module")
def secure(keys: Path) -> Iterator[LocalDaemon]:
    """A daemon that requires CURVE, alice's key on its list: a lab PC's daemon."""
    config = keys / "secure.toml"
    config.write_text(table("security", curve=True, server_key=f"{keys}/server/server.key_secret",
                            clients=f"{keys}/clients.toml") + loopback("amp", 3))
    alice = pnn.curve_keys(keys / "server" / "server.key", keys / "alice" / "alice.key_secret")
    with LocalDaemon(config=config, curve=alice) as daemon:
        yield daemon


def test_connect_to_a_daemon_that_requires_curve(secure: LocalDaemon, keys: Path) -> None:
    alice = pnn.curve_keys(keys / "server" / "server.key", keys / "alice" / "alice.key_secret")
    with pnn.connect(secure.endpoint, "amp", curve=alice) as amp:
        layer = pnn.PhysicalLayer(amp, "nominal")
        x = torch.full((2, 3), 0.25)
        torch.testing.assert_close(layer(x), x + layer.theta()[0])
        assert amp.queries == 2
    with pytest.raises((ReplyTimeout, Unauthorized)):  # no keys: the daemon does not answer
        pnn.connect(secure.endpoint, "amp", timeout_s=2.0)


def test_summary_says_what_computed_each_pass(daemon: LocalDaemon, tmp_path: Path) -> None:
    from dataclasses import replace

    from labd.train.arch import default_arch
    from labd.train.run import run_training

    arch = replace(default_arch("vowels", "loopback"), epochs=1, twin_samples=300,
                   twin_epochs=2)
    seen = {}
    for mode, backward in (("insilico", "twin"), ("twin", "twin"), ("pat", "nominal"),
                           ("bypass", "twin")):
        s = run_training(task="vowels", system="loopback", mode=mode, backward=backward,
                         out=tmp_path / f"{mode}", endpoints=[daemon.endpoint], arch=arch,
                         progress=False, bypass_yardstick=False)
        saved = json.loads((tmp_path / mode / "summary.json").read_text())
        seen[mode] = (saved["forward"], saved["backward"])
        assert (s["forward"], s["backward"]) == seen[mode]
    assert seen == {"insilico": ("nominal", "nominal"), "twin": ("twin", "twin"),
                    "pat": ("hardware", "nominal"), "bypass": ("digital", "digital")}
