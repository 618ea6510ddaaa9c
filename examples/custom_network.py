"""Your own network around physical layers, trained with PAT through a labd daemon.

A network as a researcher writes it, in plain PyTorch: a digital linear front end, two physical
layers on the daemon's SHG system (each with its own 38 trained shaper parameters), a digital
1-D convolution along the first layer's spectrum between them, and a digital readout of both
layers' spectra (a skip connection). Every physical forward is measured on the daemon; the
backward pass goes through a digital twin fitted here from the system's own measurements
(physics-aware training). Data: the vowels shipped with labd (12 formant features, 7 classes).

    labd serve &                                         # or a lab PC's daemon:
    python examples/custom_network.py --endpoint tcp://127.0.0.1:5555
    python examples/custom_network.py --endpoint tcp://labpc:5555 \\
        --server-key server.key --client-key alice.key_secret --save-twin shg-twin.pt

It prints one line per epoch and the final test accuracy measured on the hardware.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

import labd.nn as pnn
from labd.train.datasets import load_vowels


class VowelNet(nn.Module):
    """digital linear -> SHG -> digital conv -> SHG -> digital readout of both spectra."""

    def __init__(self, shg: pnn.Hardware, twin: nn.Module, classes: int) -> None:
        super().__init__()
        n_in, n_out = shg.input_dim, shg.output_dim
        self.front = nn.Linear(12, n_in)
        self.into1 = pnn.Rescale(n_in, shg.input_range)
        self.shg1 = pnn.PhysicalLayer(shg, twin)
        self.conv = nn.Conv1d(1, 4, kernel_size=3, padding=1)
        self.mix = nn.Linear(4 * n_out, n_in)
        self.into2 = pnn.Rescale(n_in, shg.input_range)
        self.shg2 = pnn.PhysicalLayer(shg, twin)
        self.readout = nn.Linear(2 * n_out, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y1 = self.shg1(self.into1(self.front(x)))
        z = torch.relu(self.conv(y1[:, None, :])).flatten(1)
        y2 = self.shg2(self.into2(self.mix(z)))
        return self.readout(torch.cat([y1, y2], 1))


def get_twin(shg: pnn.Hardware, args: argparse.Namespace) -> nn.Module:
    if args.twin:
        return pnn.load_twin(args.twin)
    started = time.perf_counter()
    data = pnn.collect(shg, samples=args.twin_samples, repeats=2)
    twin, report = pnn.fit_twin(data, epochs=args.twin_epochs)
    print(f"{report['family']} twin of {shg.system} from {len(data.y)} points: held-out NRMSE "
          f"{report['holdout_nrmse']:.3f} ({time.perf_counter() - started:.0f} s)")
    if args.save_twin:
        pnn.save_twin(args.save_twin, twin, report)
    return twin


def accuracy(net: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():  # the physical layers still measure: this is the hardware's accuracy
        return float((net(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5555")
    p.add_argument("--system", default="shg")
    p.add_argument("--server-key", help="the daemon's public key (CURVE)")
    p.add_argument("--client-key", help="this client's .key_secret (CURVE)")
    p.add_argument("--twin", help="a saved twin (labd twin fit, or --save-twin) to use")
    p.add_argument("--save-twin", help="where to save the twin fitted here")
    p.add_argument("--twin-samples", type=int, default=10000)
    p.add_argument("--twin-epochs", type=int, default=20)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # small networks: fastest so, and leaves a local daemon its cores
    data = load_vowels()
    mean, std = data.x_train.mean(0), data.x_train.std(0)  # standardised features
    data.x_train, data.x_test = (data.x_train - mean) / std, (data.x_test - mean) / std
    curve = pnn.curve_keys(args.server_key, args.client_key) if args.server_key else None
    with pnn.connect(args.endpoint, args.system, curve=curve) as shg:
        net = VowelNet(shg, get_twin(shg, args), data.n_classes)
        pnn.initialise(net, torch.from_numpy(data.x_train))  # rescalings on measured outputs
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
        for epoch in range(1, args.epochs + 1):
            total = 0.0
            for idx in torch.randperm(len(y)).split(21):
                loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()  # through the twin, at the points the hardware measured
                opt.step()
                total += loss.item() * len(idx)
            if epoch % 10 == 0 or epoch == args.epochs:
                print(f"epoch {epoch}: training loss {total / len(y):.3f}, test accuracy on "
                      f"the hardware {accuracy(net, data.x_test, data.y_test):.3f}")
        result = {"test_accuracy": accuracy(net, data.x_test, data.y_test),
                  "train_accuracy": accuracy(net, data.x_train, data.y_train),
                  "physical_queries": shg.queries}
    print(f"final: test {result['test_accuracy']:.3f}, train {result['train_accuracy']:.3f}, "
          f"{result['physical_queries']} shots")
    return result


if __name__ == "__main__":
    main()
