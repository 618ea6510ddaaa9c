"""The pipeline variants the duty benchmark tries (``benchmarks.pipeline_variants``): the
unbatched and wide steps give the plain loop's gradient; the stale epoch is exactly
delayed-gradient SGD."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from benchmarks.pipeline_variants import VariantPipeline, pipelined_step
from tests.train.deterministic import vowel_network


@pytest.mark.parametrize("chunk", [1, 4, 21])
def test_pipelined_gradient_equals_plain(chunk: int) -> None:
    net, data = vowel_network()
    other = copy.deepcopy(net)
    x, labels = torch.from_numpy(data.x_train[:21]), torch.from_numpy(data.y_train[:21])

    loss = nn.CrossEntropyLoss()(net(x), labels)
    loss.backward()
    step = pipelined_step(other, x, labels, nn.CrossEntropyLoss(reduction="sum"), chunk)

    assert step.loss == pytest.approx(loss.item(), rel=1e-5)
    assert step.instrument_s == pytest.approx(0.001 * len(net.physical_layers()) * -(-21 // chunk))
    for (name, p), q in zip(net.named_parameters(), other.parameters(), strict=True):
        assert q.grad is not None, name
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize(("batched", "wide"), [(False, None), (True, (2, 8))])
def test_evaluation_fillers_leave_training_exact(batched: bool,
                                                 wide: tuple[int, int] | None) -> None:
    """Evaluations measured as fillers between steps: scores of the network as it was when
    ``evaluate`` was called; the steps' gradients are those of the plain loop. ``wide``: while
    fillers are left, one request per layer and minibatch, a short filler behind the first
    layer's and a long one behind the last's."""
    net, data = vowel_network()
    plain = copy.deepcopy(net)
    x_test = torch.from_numpy(data.x_test)
    with torch.no_grad():
        expected = plain(x_test)
    pipe = VariantPipeline(net, nn.CrossEntropyLoss(reduction="sum"), 11, eval_chunk=7,
                           batched=batched, wide=wide)
    evaluation = pipe.evaluate(x_test)
    if wide:  # 49 rows: 5 short chunks of 2 and 5 long ones of 8 (7 the last)
        sizes = sorted(f.x.shape[0] for f in pipe.fillers if f.x is not None)
        assert sizes == [2] * 5 + [7] + [8] * 4
    hw = net.physical_layers()[0].hardware
    assert hw is not None
    requests = hw.requests
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
        if wide:  # 2 training requests and 2 fillers a step
            assert hw.requests - requests == 4
            requests = hw.requests
    pipe.drain()
    assert evaluation.done and not pipe.inflight and not pipe.fillers
    torch.testing.assert_close(evaluation.scores, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", [21, 11])
def test_stale_epoch_is_delayed_sgd(chunk: int) -> None:
    """``train_epoch``: minibatch k's gradient is taken at the parameters before step k-1
    (minibatch 0 at the initial ones) and applied at step k: SGD with a one-step delay."""
    net, data = vowel_network()
    ref = copy.deepcopy(net)
    batches = [(torch.from_numpy(data.x_train[i:i + 21]), torch.from_numpy(data.y_train[i:i + 21]))
               for i in range(0, 105, 21)]
    pipe = VariantPipeline(net, nn.CrossEntropyLoss(reduction="sum"), chunk)
    losses = pipe.train_epoch(batches, torch.optim.SGD(net.parameters(), lr=0.1))

    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    previous = copy.deepcopy(ref)  # the parameters one step back
    expected = []
    for k, (x, labels) in enumerate(batches):
        at = copy.deepcopy(previous if k else ref)
        loss = nn.CrossEntropyLoss()(at(x), labels)
        loss.backward()
        expected.append(loss.item())
        previous = copy.deepcopy(ref)
        for p, q in zip(ref.parameters(), at.parameters(), strict=True):
            p.grad = q.grad
        opt.step()
        opt.zero_grad()
    assert losses == pytest.approx(expected, rel=1e-5)
    for (name, p), q in zip(ref.named_parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6, msg=name)
    assert not pipe.inflight


def test_drained_wide_evaluation_is_measured_in_two_chunks() -> None:
    """An evaluation drained before any of its requests was sent (the last one of a training)
    is measured as two chunks per layer, whatever chunks its fillers would have had."""
    net, data = vowel_network()
    x_test = torch.from_numpy(data.x_test)
    with torch.no_grad():
        expected = net(x_test)
    hw = net.physical_layers()[0].hardware
    assert hw is not None
    pipe = VariantPipeline(net, nn.CrossEntropyLoss(reduction="sum"), 11, eval_chunk=7,
                           wide=(2, 8))
    evaluation = pipe.evaluate(x_test)
    assert len(pipe.fillers) == 10
    before = hw.requests
    pipe.drain()
    assert hw.requests - before == 2 * len(net.physical_layers())
    torch.testing.assert_close(evaluation.scores, expected, rtol=1e-5, atol=1e-6)
