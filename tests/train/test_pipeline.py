"""The trainer's pipelined PAT step computes the plain loop's gradient (same loss, scores and
gradients of every parameter, whatever the chunk size) and its evaluations score the network as
it was when they were asked for (a deterministic stand-in makes the two comparable)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from drivers.physics.nominal import nominal_model
from labd.config import load_config
from labd.daemon.system import PhysicalSystem
from labd.train.pipeline import Pipeline
from tests.train.deterministic import vowel_network


@pytest.mark.parametrize(("chunk", "jacobians", "overrides"), [
    (1, False, {}), (11, False, {}), (21, False, {}), (11, True, {}), (4, True, {}),
    (11, False, {"units": 2}), (8, True, {"units": 2, "hybrid": True, "readout": "linear"})])
def test_batched_step_gradient_equals_plain(chunk: int, jacobians: bool,
                                            overrides: dict[str, Any]) -> None:
    """``Pipeline.step``: one model evaluation (or Jacobian) per layer and one backward pass
    per minibatch, the plain loop's loss, scores and gradients; also with
    several units per layer (a parameter row per shot) and digital linear layers."""
    net, data = vowel_network(**overrides)
    other = copy.deepcopy(net)
    x, labels = torch.from_numpy(data.x_train[:21]), torch.from_numpy(data.y_train[:21])
    scores = net(x)
    loss = nn.CrossEntropyLoss()(scores, labels)
    loss.backward()
    pipe = Pipeline(other, nn.CrossEntropyLoss(reduction="sum"), chunk)
    pipe.jacobians = jacobians
    step = pipe.step(x, labels)
    assert step.loss == pytest.approx(loss.item(), rel=1e-5)
    torch.testing.assert_close(step.scores, scores.detach(), rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(net.named_parameters(), other.parameters(), strict=True):
        assert q.grad is not None, name
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_evaluation_fillers_leave_training_exact() -> None:
    """Evaluations measured as fillers between steps: scores of the network as it was when
    ``evaluate`` was called; the steps' gradients are those of the plain loop."""
    net, data = vowel_network()
    plain = copy.deepcopy(net)
    x_test = torch.from_numpy(data.x_test)
    with torch.no_grad():
        expected = plain(x_test)
    pipe = Pipeline(net, nn.CrossEntropyLoss(reduction="sum"), 11, eval_chunk=7)
    evaluation = pipe.evaluate(x_test)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    opt_plain = torch.optim.SGD(plain.parameters(), lr=0.1)
    for i in range(0, 63, 21):
        x = torch.from_numpy(data.x_train[i:i + 21])
        labels = torch.from_numpy(data.y_train[i:i + 21])
        opt.zero_grad()
        opt_plain.zero_grad()
        pipe.step(x, labels)
        nn.CrossEntropyLoss()(plain(x), labels).backward()
        for (name, p), q in zip(plain.named_parameters(), net.parameters(), strict=True):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
        opt.step()
        opt_plain.step()
    pipe.drain()
    assert evaluation.done and not pipe.inflight and not pipe.fillers
    torch.testing.assert_close(evaluation.scores, expected, rtol=1e-5, atol=1e-6)


def test_evaluations_reuse_frozen_copies() -> None:
    """Evaluations one after the other (the second's frozen copy is the first's, overwritten):
    each scores the network as it was when ``evaluate`` was called."""
    net, data = vowel_network()
    x_test = torch.from_numpy(data.x_test)
    pipe = Pipeline(net, nn.CrossEntropyLoss(reduction="sum"), 11, eval_chunk=11)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    expected, evaluations, copies = [], [], []
    for i in range(0, 84, 21):
        with torch.no_grad():
            expected.append(net(x_test))
        evaluations.append(pipe.evaluate(x_test))
        copies.append(evaluations[-1].network)
        for j in (i, i + 21):  # two steps: the evaluation's 10 fillers are measured
            opt.zero_grad()
            pipe.step(torch.from_numpy(data.x_train[j:j + 21]),
                      torch.from_numpy(data.y_train[j:j + 21]))
            opt.step()
        pipe.drain()
    assert copies[1] is copies[0] and copies[3] is copies[0]  # reused, not copied again
    for evaluation, scores in zip(evaluations, expected, strict=True):
        assert evaluation.done and evaluation.network is None
        torch.testing.assert_close(evaluation.scores, scores, rtol=1e-5, atol=1e-6)
    assert not torch.equal(expected[0], expected[-1])


def test_batched_step_records_each_layer_as_the_plain_loop() -> None:
    """A layer's recorder (twin refinement) gets each layer's minibatch at once, in the plain
    loop's order, whatever the chunks: the same arrays as ``PhysicalLayer.measure`` gives it."""
    net, data = vowel_network(units=2)
    other = copy.deepcopy(net)
    records: dict[str, list[tuple[np.ndarray, ...]]] = {"plain": [], "piped": []}
    for name, network in (("plain", net), ("piped", other)):
        for layer in network.physical_layers():
            layer.recorder = lambda x, t, y, into=records[name]: into.append((x, t, y))
    x, labels = torch.from_numpy(data.x_train[:21]), torch.from_numpy(data.y_train[:21])
    nn.CrossEntropyLoss()(net(x), labels).backward()
    Pipeline(other, nn.CrossEntropyLoss(reduction="sum"), 8).step(x, labels)
    assert len(records["plain"]) == len(records["piped"]) == 2
    for plain, piped in zip(records["plain"], records["piped"], strict=True):
        for a, b in zip(plain, piped, strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


def test_drained_evaluation_is_measured_in_two_chunks() -> None:
    """An evaluation drained before any of its requests was sent (the last one of a training)
    is measured as two chunks per layer, whatever chunks its fillers would have had."""
    net, data = vowel_network()
    x_test = torch.from_numpy(data.x_test)
    with torch.no_grad():
        expected = net(x_test)
    hw = net.physical_layers()[0].hardware
    assert hw is not None
    pipe = Pipeline(net, nn.CrossEntropyLoss(reduction="sum"), 11, eval_chunk=7)
    evaluation = pipe.evaluate(x_test)
    assert len(pipe.fillers) == 7
    before = hw.requests
    pipe.drain()
    assert hw.requests - before == 2 * len(net.physical_layers())
    torch.testing.assert_close(evaluation.scores, expected, rtol=1e-5, atol=1e-6)


def test_automatic_jacobians_fall_back_to_the_models_backward() -> None:
    """``jacobians=None``: a model whose Jacobian ``vmap`` cannot batch (the oscillator's
    numpy adjoint) gets its own backward pass (``ModelPoint``), and is not tried again; asked
    for explicitly (``jacobians=True``), the failure shows."""
    from labd.train.layers import PhysicalLayer
    from labd.train.pipeline import JacobianPoint, ModelPoint

    description = PhysicalSystem.from_config(
        "oscillator", load_config().systems["oscillator"]).describe()
    layer = PhysicalLayer(description, nominal_model(description))
    x = torch.rand(2, layer.input_dim)
    theta = layer.theta()[0].detach()
    net, _ = vowel_network()
    pipe = Pipeline(net, nn.CrossEntropyLoss(reduction="sum"), 11)
    point = pipe._point(layer, x, theta, True)
    assert isinstance(point, ModelPoint) and id(layer.model) in pipe._no_jacobians
    assert isinstance(pipe._point(net.physical_layers()[0], torch.rand(3, 12),
                                  torch.rand(38), True), JacobianPoint)
    pipe = Pipeline(net, nn.CrossEntropyLoss(reduction="sum"), 11)
    pipe.jacobians = True
    with pytest.raises(RuntimeError):
        pipe._point(layer, x, theta, True)
