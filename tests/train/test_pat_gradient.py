"""The PAT function: hardware forward, the model's vector-Jacobian product backward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drivers.physics.nominal import nominal_model
from labd.client import LabClient
from labd.train.hardware import Hardware
from labd.train.layers import PhysicalLayer, Rescale


@pytest.fixture()
def hardware(client: LabClient) -> Hardware:
    return Hardware(client, "loopback")


def _layer(hw: Hardware, model: torch.nn.Module, units: int = 1) -> PhysicalLayer:
    return PhysicalLayer(hw.description, model, hw, units,
                         torch.Generator().manual_seed(0))


def _grads(layer: PhysicalLayer, x: torch.Tensor, w: torch.Tensor, path: str):
    layer.path = path  # type: ignore[assignment]
    layer.zero_grad()
    xg = x.clone().requires_grad_(True)
    y = layer(xg)
    (y * w).sum().backward()
    return y.detach(), xg.grad.clone(), layer.raw_theta.grad.clone()


@pytest.mark.parametrize("units", [1, 3])
def test_pat_gradient_equals_model_gradient_when_they_agree(hardware: Hardware,
                                                            units: int) -> None:
    """Loopback y = x + theta and its exact nominal model: PAT = the model's gradients."""
    layer = _layer(hardware, nominal_model(hardware.description), units)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(16, 12 * units, generator=gen) - 0.5
    w = torch.randn(16, 12 * units, generator=gen)
    y_pat, gx_pat, gt_pat = _grads(layer, x, w, "pat")
    y_mod, gx_mod, gt_mod = _grads(layer, x, w, "model")
    torch.testing.assert_close(y_pat, y_mod, atol=1e-6, rtol=0)
    torch.testing.assert_close(gx_pat, gx_mod, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(gt_pat, gt_mod, atol=1e-6, rtol=1e-5)
    assert hardware.queries == 16 * units


def test_pat_gradient_matches_finite_differences_on_hardware(hardware: Hardware) -> None:
    """Gradcheck-style: the PAT gradient of a loss against central differences measured on
    the daemon (float32 wire, so a loose tolerance)."""
    layer = _layer(hardware, nominal_model(hardware.description))
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(8, 12, generator=gen) * 0.6 - 0.3
    w = torch.randn(8, 12, generator=gen)

    def loss(xv: torch.Tensor) -> float:
        layer.path = "hardware"
        return float((layer(xv) ** 2 * w).sum())

    layer.zero_grad()
    xg = x.clone().requires_grad_(True)
    layer.path = "pat"
    (layer(xg) ** 2 * w).sum().backward()
    eps = 1e-2
    for i, j in [(0, 0), (3, 5), (7, 11)]:
        dx = torch.zeros_like(x)
        dx[i, j] = eps
        fd = (loss(x + dx) - loss(x - dx)) / (2 * eps)
        assert fd == pytest.approx(float(xg.grad[i, j]), rel=2e-2, abs=2e-3)


def test_pat_backward_uses_the_model_at_the_measured_point(hardware: Hardware) -> None:
    """With a model that disagrees with the hardware, forward is measured and backward is the
    model's VJP at the same (x, theta) with dL/dy from the measured y."""

    class Squared(torch.nn.Module):
        def forward(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
            return (x + theta) ** 2

    layer = _layer(hardware, Squared())
    gen = torch.Generator().manual_seed(3)
    x = (torch.rand(4, 12, generator=gen) - 0.5).requires_grad_(True)
    y = layer(x)
    torch.testing.assert_close(y, (x + layer.theta()[0]).detach(), atol=1e-6, rtol=0)
    (y ** 2).sum().backward()
    expected = 2 * y.detach() * 2 * (x.detach() + layer.theta()[0].detach())
    torch.testing.assert_close(x.grad, expected, atol=1e-5, rtol=1e-5)


def test_theta_stays_in_range_and_rescale_maps_into_input_range(hardware: Hardware) -> None:
    layer = _layer(hardware, nominal_model(hardware.description))
    with torch.no_grad():
        layer.raw_theta.fill_(40.0)
    assert float(layer.theta().detach().max()) <= 1.0
    for squash in ("sigmoid", "hard"):
        r = Rescale(12, (-1.0, 1.0), squash)  # type: ignore[arg-type]
        out = r(torch.randn(100, 12) * 1e3).detach()
        assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0
    y = layer(torch.full((2, 12), 1.0))  # hardware never sees an out-of-range request
    assert np.all(np.isfinite(y.detach().numpy()))


def test_units_see_the_same_input_and_bypass_pools_windows() -> None:
    from labd.train.arch import Bypass, Resample

    x = torch.arange(12.0).reshape(2, 6)
    tiled = Resample(6, 6, units=3)(x)
    torch.testing.assert_close(tiled, x.repeat(1, 3))
    pooled = Bypass(6, 3, units=1)(x)
    torch.testing.assert_close(pooled, x.reshape(2, 3, 2).mean(2))
    assert Bypass(6, 2, units=3)(tiled).shape == (2, 6)
