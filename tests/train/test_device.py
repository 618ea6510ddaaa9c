"""Device plumbing, checked on the CPU: the chosen device is resolved and recorded, the network
and the twin live on it, and in the training loop nothing but the hardware boundary
(``labd.train.devices``) moves tensors between devices."""

from __future__ import annotations

import collections
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

from labd.daemon.process import LocalDaemon
from labd.train import loop
from labd.train.devices import DeviceError, resolve_device
from tests.train.test_defaults import _csv

#: torch functions and methods that move data between devices or to/from the host
MOVES = {"numpy", "cpu", "cuda", "to", "from_numpy", "as_tensor", "tensor", "__array__"}
WRAPPERS = ("torch/overrides.py", "torch/_tensor.py")


class Moves(TorchFunctionMode):
    """Counts data moves by the labd line that made them (not torch's own internals)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter[str] = collections.Counter()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None
                           ) -> Any:
        name = getattr(func, "__name__", "")
        if name in MOVES:
            # who called: the innermost frame outside torch's dispatch wrappers (a call from
            # torch's own code, e.g. the optimiser's state, is not the trainer's)
            caller = next(f for f in reversed(traceback.extract_stack()[:-1])
                          if not f.filename.endswith(WRAPPERS))
            if "/labd/" in caller.filename:
                where = caller.filename.split("/labd/")[1]
                self.calls[f"{where}:{caller.lineno}:{name}"] += 1
        return func(*args, **(kwargs or {}))


def test_device_names_resolve_or_fail_clearly() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA device"):
            resolve_device("cuda")


@pytest.mark.parametrize("pipeline", [True, False])
def test_training_moves_data_only_at_the_hardware_boundary(
        daemon: LocalDaemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        pipeline: bool) -> None:
    from labd.train import run
    from labd.train.twins import device_of

    moves = Moves()
    trainers: list[loop.Trainer] = []
    real_epoch = loop.Trainer._train_epoch

    sent = [0]

    def spied(self: loop.Trainer, *args: Any) -> Any:
        trainers.append(self)
        before = self.hardware[0].requests
        with moves:
            out = real_epoch(self, *args)
        sent[0] += self.hardware[0].requests - before
        return out

    monkeypatch.setattr(loop.Trainer, "_train_epoch", spied)
    summary = run.run_training(
        data=_csv(tmp_path / "d.csv"), system="loopback", mode="pat", out=tmp_path / "run",
        endpoints=[daemon.endpoint], progress=False, pipeline=pipeline, device="cpu",
        bypass_yardstick=False, overrides={"epochs": 2, "patience": 0, "twin_samples": 300,
                                           "twin_epochs": 2, "twin_hidden": (16,)})
    assert summary["device"] == "cpu" and summary["pipelined"] is pipeline
    trainer = trainers[0]
    cpu = torch.device("cpu")
    assert trainer.device == cpu
    assert all(t.device == cpu for t in [*trainer.net.parameters(), *trainer.net.buffers()])
    assert all(x.device == cpu for pair in trainer.tensors.values() for x in pair)
    layer = trainer.net.physical_layers()[0]
    assert device_of(layer.model) == cpu  # the twin, fitted on the device
    # in the loop: the boundary (rows to the host, measurements back) and one explicit
    # shuffle index a epoch; nothing else
    boundary = {k: n for k, n in moves.calls.items() if k.startswith("train/devices.py")}
    others = {k: n for k, n in moves.calls.items() if k not in boundary}
    assert set(others) == {next(k for k in others if "loop.py" in k)}, others
    assert sum(others.values()) == 2  # the two epochs' permutations
    to_host = sum(n for k, n in boundary.items() if k.endswith(":numpy"))
    back = sum(n for k, n in boundary.items() if k.endswith(":to"))
    # x and theta out per request sent, y back per reply (pipelined: replies of requests sent
    # in the epoch before may arrive in this one, and the other way round)
    assert sent[0] > 0 and to_host == 2 * sent[0]
    assert abs(back - sent[0]) <= (8 if pipeline else 0)
