"""The plugin door: entry points for labd's own classes and a lab's, dotted class paths, and
the clear errors of ``labd config --check`` and ``labd serve`` (issue 14 points 1 and 6)."""

from __future__ import annotations

import importlib.metadata as metadata
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from drivers import plugins
from drivers.base import Detector, Drive
from drivers.physics.nominal import NoNominalModel, nominal_model
from drivers.sim.bench import Bench
from labd.cli import build_parser
from labd.client import LabClient
from labd.config import ConfigError, default_config_text, load_config
from labd.daemon.process import LocalDaemon, free_port
from labd.daemon.system import build_systems
from tests.plugins.conftest import system

ROOT = Path(__file__).parents[2]

BASES = {"labd.drivers": (Drive, Detector), "labd.benches": (Bench,),
         "labd.physics": (torch.nn.Module,)}


def test_every_builtin_is_an_entry_point_of_labd_and_loads_as_its_interface():
    declared = {(ep.group, ep.name): ep.value
                for ep in metadata.distribution("labd").entry_points if ep.group in BASES}
    assert {g for g, _ in declared} == set(BASES)
    for (group, name), target in declared.items():
        kind = next(k for k, g in plugins.GROUPS.items() if g == group)
        found = plugins.find(kind, name)
        assert (found.target, found.distribution) == (target, f"labd {metadata.version('labd')}")
        assert issubclass(plugins.load(kind, name), BASES[group])
    default = load_config()
    for s in default.systems.values():  # everything the default names is among them
        for kind, name in (("driver", s.drive.driver), ("driver", s.detector.driver),
                           ("bench", s.kind), ("physics", s.kind)):
            assert (plugins.GROUPS[kind], name) in declared


def test_there_is_no_second_path_for_builtins(monkeypatch):
    """Without the entry points, labd's own systems do not build: they are found no other way."""
    monkeypatch.setattr(plugins, "registered", lambda kind: {})
    with pytest.raises(ConfigError) as err:
        build_systems(load_config())
    assert "unknown driver 'sim.dac'; registered drivers: none" in str(err.value)
    assert "systems.shg.bench: unknown bench 'shg'" in str(err.value)


def test_labd_plugins_lists_each_class_and_its_distribution(labd):
    code, out = labd("plugins")
    assert code == 0, out
    assert re.search(r"sim\.dac\s+drivers\.sim\.instruments:SimDAC\s+\[labd 0\.1\.0\]", out)
    assert re.search(r"oscillator\s+drivers\.physics\.oscillator:OscillatorPhysics", out)
    code, out = labd("plugins", "--json")
    listed = json.loads(out)
    assert {r["name"] for r in listed["bench"]} >= {"loopback", "shg", "plate", "oscillator"}
    assert all(r["error"] is None for rows in listed.values() for r in rows)


BROKEN = {
    "entry_points": """
        [labd.drivers]
        broken.dac = broken_rig.dac:DAC
        gone.adc = broken_rig.gone:ADC
        [labd.benches]
        sim.dac = drivers.sim.instruments:SimDAC
    """,
    "modules": {"broken_rig/__init__.py": "",
                "broken_rig/dac.py": "raise ImportError('libvendor.so: cannot open shared "
                                     "object file')\n"},
}


def test_a_plugin_that_fails_to_import_is_named_with_its_distribution(labd, distribution,
                                                                      write):
    distribution("broken-rig", "0.3", BROKEN["entry_points"], BROKEN["modules"])
    code, out = labd("plugins")
    assert code == 1
    assert "3 entry point(s) failed to load" in out
    assert "bench 'sim.dac': drivers.sim.instruments:SimDAC is not a Bench" in out
    assert ("driver 'broken.dac' failed to load: labd.drivers entry point 'broken.dac' = "
            "'broken_rig.dac:DAC' (distribution broken-rig 0.3) raised ImportError: "
            "libvendor.so: cannot open shared object file") in out
    assert "ModuleNotFoundError: No module named 'broken_rig.gone'" in out
    assert "sim.dac" in out and "[labd 0.1.0]" in out  # the good ones are still listed
    code, out = labd("config", "--check",
                     str(write(system(drive='{ driver = "broken.dac" }'))))
    assert code == 2
    assert "systems.lab.drive: driver 'broken.dac' failed to load" in out
    assert "distribution broken-rig 0.3" in out and "libvendor.so" in out
    assert "Traceback" not in out


def test_unknown_names_list_the_known_ones(labd, write):
    text = system(drive='{ driver = "sim.dax" }', bench='{ type = "loopbak", seed = 0 }',
                  extra='nominal = "loopbak"')
    code, out = labd("config", "--check", str(write(text)))
    assert code == 2
    assert "3 problem(s)" in out
    assert re.search(r"systems\.lab\.drive: unknown driver 'sim\.dax'; registered drivers: "
                     r"keysight\.33500b, .*sim\.dac", out)
    assert ("systems.lab.bench: unknown bench 'loopbak'; registered benches: loopback, "
            "oscillator, plate, shg") in out
    assert "systems.lab.nominal: unknown nominal model 'loopbak'" in out


def test_a_class_that_does_not_implement_the_interface(labd, write):
    write("""
        from drivers.base import Detector

        class HalfADC(Detector):  # no read()
            def identify(self):
                return "half"
    """, "half.py")
    text = (system("a", drive='{ driver = "collections:OrderedDict" }')
            + system("b", drive='{ driver = "drivers.sim.instruments:SimADC" }',
                     detector='{ driver = "half:HalfADC" }', bench=""))
    code, out = labd("config", "--check", str(write(text)))
    assert code == 2
    assert ("systems.a.drive: driver 'collections:OrderedDict': collections:OrderedDict is "
            "not a Drive (subclass drivers.base.Drive)") in out
    assert "systems.b.drive: driver 'drivers.sim.instruments:SimADC': " \
           "drivers.sim.instruments:SimADC is not a Drive" in out
    assert "systems.b.detector: driver 'half:HalfADC': half:HalfADC does not implement read" \
           in out


def test_options_are_checked_against_the_constructor(labd, write):
    text = (system("a", detector='{ driver = "sim.adc", gain = 2.0 }')
            + system("b", drive='{ driver = "keysight.33500b" }',
                     detector='{ driver = "keysight.infiniivision", resource = "TCPIP::x" }',
                     bench="")
            + system("c", drive='{ driver = "keysight.33500b", resource = "TCPIP::x" }')
            + system("d", drive='{ driver = "sim.dac", channels = 3 }', bench="{ seed = 0 }")
            + system("e", bench="{ seed = 0, colour = 'red' }"))
    code, out = labd("config", "--check", str(write(text)))
    assert code == 2
    assert ("systems.a.detector: driver 'sim.adc' (drivers.sim.instruments:SimADC) takes no "
            "option 'gain' (its options: samples, faults)") in out
    assert ("systems.b.drive: driver 'keysight.33500b' (drivers.visa.keysight_33500b:"
            "Keysight33500B) needs option 'resource'") in out
    assert ("systems.c.drive: driver 'keysight.33500b' is not a simulated instrument (it takes "
            "no bench): remove the system's bench table") in out
    assert "systems.d.drive: driver 'sim.dac': channels set by labd" in out
    assert ("systems.e.bench: bench 'loopback' (drivers.sim.loopback:LoopbackBench) takes no "
            "option 'colour' (its options: seed, timing, shot_s)") in out
    assert "systems.b.detector" not in out  # its options are right; nothing opened it


def test_a_drive_narrower_than_the_encoding_is_a_config_error(labd, write):
    """Issue 14: such a drive was accepted, then every forward faulted (nothing was sent)."""
    narrow = system("narrow", drive='{ driver = "sim.dac", limits = [-1.0, 1.0] }')
    code, out = labd("config", "--check", str(write(narrow)))
    assert code == 2
    assert ("systems.narrow.drive: limits [-1, 1] do not cover the drive values this system "
            "produces, [-2, 2] (input_range [-1.0, 1.0], param_range [-1.0, 1.0], layout "
            "'add', scale 1, offset 0)") in out
    # the same limits cover the system once its encoding scales the drive down by half
    halved = narrow.replace('layout = "add"', 'layout = "add", scale = 0.5')
    code, out = labd("config", "--check", str(write(halved)))
    assert code == 0, out
    assert "drive sim.dac (limits [-1.0, 1.0])" in out


def test_a_trace_too_short_for_the_decoding_is_a_config_error(labd, write):
    text = system(extra="decoding = { start = 2 }")
    code, out = labd("config", "--check", str(write(text)))
    assert code == 2
    assert "systems.lab.detector: a trace of 4 samples (from sample 2) cannot fill 4 bins" in out


def test_serve_refuses_what_check_refuses_without_starting_anything(labd, write, tmp_path):
    """Issue 14: --check passed a config that serve could not build (a raw KeyError)."""
    config = write(system("good") + system("bad", detector='{ driver = "sim.adk" }'))
    code, checked = labd("config", "--check", str(config))
    assert code == 2
    store = tmp_path / "store.sqlite"
    began = time.monotonic()
    served = subprocess.run(
        [sys.executable, "-m", "labd", "serve", "--config", str(config), "--store", str(store),
         "--bind", f"tcp://127.0.0.1:{free_port()}", "--events", ""],
        capture_output=True, text=True, timeout=120)
    assert served.returncode == 2
    assert "Traceback" not in served.stderr
    assert "systems.bad.detector: unknown driver 'sim.adk'" in served.stderr
    assert checked.split("\n", 1)[1].strip().splitlines() == [
        line.strip() for line in served.stderr.splitlines() if "systems.bad" in line]
    assert not store.exists()  # nothing recorded, nothing bound: refused before anything
    assert time.monotonic() - began < 60


def test_the_commands_the_config_output_names_work(labd, tmp_path):
    """Issue 14: `labd config` told the user to run `labd config --default`, which failed."""
    text = default_config_text()
    commands = re.findall(r"`(labd [^`]+)`", text)
    assert commands
    parser = build_parser()
    for command in commands:
        parser.parse_args(command.split(">")[0].split()[1:])  # each parses (SystemExit if not)
    code, out = labd("config")
    assert code == 0 and out == text
    rig = tmp_path / "rig.toml"
    rig.write_text(out)  # `labd config > rig.toml`
    code, out = labd("config", "--check", str(rig))
    assert code == 0, out
    assert "OK (every system built; no instrument opened)" in out


SCRIPT = """
    import numpy as np
    import torch

    from drivers.sim.bench import Bench


    class TanhBench(Bench):
        '''A saturating amplifier between DAC and ADC: y = tanh(gain * drive), a little noise.'''

        def __init__(self, mapping, physics, seed=0, timing="fast"):
            super().__init__(mapping, physics, seed, timing)
            self.gain = float(physics["gain"]) * (1 + 0.05 * self.device_rng.standard_normal())
            self.samples = mapping.channels

        def _respond(self, patterns):
            noise = 0.01 * self.noise_rng.standard_normal(patterns.shape)
            return np.tanh(self.gain * patterns) + noise


    class TanhPhysics(torch.nn.Module):
        def __init__(self, mapping, physics):
            super().__init__()
            self.gain = float(physics["gain"])

        def forward(self, patterns):
            return torch.tanh(self.gain * patterns)
"""


def test_a_class_in_the_config_folder_serves_by_its_dotted_path(labd, write):
    write(SCRIPT, "amp_rig.py")
    text = system("amp", kind="tanh_amp", bench='{ type = "amp_rig:TanhBench", seed = 0 }',
                  extra='nominal = "amp_rig:TanhPhysics"\nphysics = { gain = 0.8 }')
    config = write(text)
    code, out = labd("config", "--check", str(config))
    assert code == 0, out
    assert "bench TanhBench, nominal model amp_rig:TanhPhysics" in out
    with LocalDaemon(config=config) as daemon, LabClient(daemon.endpoint) as client:
        d = client.describe("amp")
        assert d["nominal"] == {"model": "amp_rig:TanhPhysics",
                                "target": "amp_rig:TanhPhysics", "distribution": None}
        x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
        theta = np.full(4, 0.5, np.float32)
        y = client.forward("amp", x, theta)
    nominal = nominal_model(d)(torch.from_numpy(x), torch.from_numpy(theta)).detach().numpy()
    np.testing.assert_allclose(y, nominal, atol=0.15)  # close, not equal: the gap is real
    assert not np.allclose(y, nominal, atol=1e-3)


def test_a_system_without_a_nominal_model_is_served_and_described(labd, write):
    write(SCRIPT, "amp_rig.py")
    text = (system("none", extra='nominal = ""')  # a loopback told to have none
            + system("unmodelled", kind="tanh_amp", extra="physics = { gain = 0.8 }",
                     bench='{ type = "amp_rig:TanhBench", seed = 0 }'))  # none registered
    config = write(text)
    code, out = labd("config", "--check", str(config))
    assert code == 0, out
    assert out.count("nominal model none") == 2
    with LocalDaemon(config=config) as daemon, LabClient(daemon.endpoint) as client:
        for name in ("none", "unmodelled"):
            d = client.describe(name)
            assert d["nominal"] is None
            y = client.forward(name, np.zeros((3, 4), np.float32), np.zeros(4, np.float32))
            assert y.shape == (3, 4)
            with pytest.raises(NoNominalModel, match=f"system '{name}' .* has no nominal model"):
                nominal_model(d)


def test_a_nominal_model_missing_on_the_trainer_side_says_which_package(write):
    described = {"name": "chain", "kind": "duffing_chain", "input_dim": 4, "param_dim": 4,
                 "output_dim": 4, "physics": {},
                 "nominal": {"model": "duffing_chain", "target": "labd_duffing.physics:X",
                             "distribution": "labd-duffing-chain 0.1.0"}}
    with pytest.raises(plugins.PluginError) as err:
        nominal_model(described)
    assert "unknown nominal model 'duffing_chain'" in str(err.value)
    assert "from labd-duffing-chain 0.1.0: install the same package here" in str(err.value)


def test_a_name_two_distributions_register_is_refused(labd, distribution, write):
    distribution("other-rig", "1.0", """
        [labd.drivers]
        sim.dac = other_rig:DAC
    """, {"other_rig.py": "from drivers.sim.instruments import SimDAC as DAC\n"})
    code, out = labd("config", "--check", str(write(system())))
    assert code == 2
    assert "systems.lab.drive: driver 'sim.dac' is registered more than once: " in out
    assert ("labd.drivers entry point 'sim.dac' = 'drivers.sim.instruments:SimDAC' "
            "(distribution labd 0.1.0)") in out
    assert "labd.drivers entry point 'sim.dac' = 'other_rig:DAC' (distribution other-rig 1.0)" \
        in out
    assert out.rstrip().endswith("Uninstall one of these distributions")


def test_train_on_a_config_whose_system_has_no_nominal_model(write, tmp_path):
    """`labd train --config` starts its daemon on the user's file; in silico needs a nominal
    model, and its absence is one clear line, not a traceback."""
    config = write(system("bare", extra='nominal = ""'))
    data = write("f0,f1,label\n" + "".join(f"{i % 7 / 7},{i % 5 / 5},{i % 2}\n"
                                           for i in range(40)), "data.csv")
    done = subprocess.run(
        [sys.executable, "-m", "labd", "train", "--config", str(config), "--data", str(data),
         "--system", "bare", "--mode", "insilico", "--epochs", "1", "--out",
         str(tmp_path / "run"), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "labd train: system 'bare' (kind 'loopback') has no nominal model" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_the_driver_template_checks_by_its_path_without_opening_anything(labd, write):
    """The guide's template (real SCPI drivers) named by path from examples/: built, its
    options checked, nothing connected (the addresses lead nowhere)."""
    examples = ROOT / "examples"
    text = f"""
        [plugins]
        path = ["{examples}"]

        [systems.acme]
        kind = "acme"
        input_dim = 4
        param_dim = 4
        output_dim = 4
        input_range = [-1.0, 1.0]
        param_range = [-1.0, 1.0]
        encoding = {{ layout = "add", hold = 8 }}
        decoding = {{ reduce = "rms" }}
        [systems.acme.drive]
        driver = "driver_template:TemplateSource"
        resource = "TCPIP::192.0.2.1::5025::SOCKET"
        [systems.acme.detector]
        driver = "driver_template:TemplateDigitiser"
        resource = "TCPIP::192.0.2.2::5025::SOCKET"
        samples = 32
    """
    code, out = labd("config", "--check", str(write(text)))
    assert code == 0, out
    assert ("acme: acme, x 4 -> y 4, theta 4, drive driver_template:TemplateSource (limits "
            "[-2.0, 2.0]), detector driver_template:TemplateDigitiser (32 samples), nominal "
            "model none") in out
    code, out = labd("config", "--check", str(write(text.replace("samples = 32", ""))))
    assert code == 0, out  # samples default to the drive's channels: 4 x 8
    assert "(32 samples)" in out


def test_survey_starts_its_daemon_on_a_config(write):
    config = write(system("lab") + system("other"))
    done = subprocess.run([sys.executable, "-m", "labd", "survey", "--config", str(config),
                           "--batch", "8"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.split()[0] for line in done.stdout.splitlines()[3:-2]]
    assert rows == ["lab", "other"], done.stdout
