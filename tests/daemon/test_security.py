"""CURVE authentication, per-system access and safe binding, against a real daemon."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import zmq

from labd.client import LabClient, ReplyTimeout, Unauthorized, curve_keys
from labd.daemon.process import LocalDaemon, free_port
from tests.configs import loopback, table

F4 = np.float32


def labd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labd", *map(str, args)], capture_output=True,
                          text=True, timeout=60)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    assert labd("keys", "server", d / "server").returncode == 0
    for name in ("alice", "bob", "mallory"):
        assert labd("keys", "client", name, d / name).returncode == 0
    clients = d / "clients.toml"
    for name in ("alice", "bob"):  # mallory is never added
        out = labd("keys", "add", name, d / name / f"{name}.key", "--clients", clients)
        assert out.returncode == 0, out.stderr
    listed = labd("keys", "list", "--clients", clients).stdout
    assert "alice" in listed and "bob" in listed and "mallory" not in listed
    return d


@pytest.fixture(scope="module")
def secure_daemon(keys):
    config = keys / "secure.toml"
    config.write_text(
        table("security", curve=True, server_key=f"{keys}/server/server.key_secret",
              clients=f"{keys}/clients.toml")
        + loopback("laser", 2, clients=["alice"]) + loopback("plate", 2))
    alice = curve_keys(keys / "server" / "server.key", keys / "alice" / "alice.key_secret")
    with LocalDaemon(config=config, curve=alice) as daemon:
        yield daemon


def client_for(daemon, keys, name, timeout_s=5.0):
    return LabClient(daemon.endpoint, timeout_s=timeout_s, retries=0, curve=curve_keys(
        keys / "server" / "server.key", keys / name / f"{name}.key_secret"))


X = np.full((1, 2), 0.25, F4)
T = np.zeros(2, F4)


def test_allowed_client_is_served(secure_daemon, keys):
    with client_for(secure_daemon, keys, "alice") as alice:
        assert sorted(alice.hello()["systems"]) == ["laser", "plate"]
        np.testing.assert_allclose(alice.forward("laser", X, T), X)
        np.testing.assert_allclose(alice.forward("plate", X, T), X)


def test_key_barred_from_a_system(secure_daemon, keys):
    with client_for(secure_daemon, keys, "bob") as bob:
        np.testing.assert_allclose(bob.forward("plate", X, T), X)
        with pytest.raises(Unauthorized) as err:
            bob.forward("laser", X, T)
        assert "bob" in err.value.message and not err.value.retryable
        with pytest.raises(Unauthorized):
            bob.describe("laser")


def raw_curve_socket(daemon, keys, name):
    """A bare DEALER with a client's CURVE keys: no labd code between the test and the wire."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if name is not None:
        ck = curve_keys(keys / "server" / "server.key", keys / name / f"{name}.key_secret")
        sock.curve_serverkey = ck["server_key"]
        sock.curve_publickey, sock.curve_secretkey = ck["public_key"], ck["secret_key"]
    sock.connect(daemon.endpoint)
    return sock


@pytest.mark.parametrize("name", ["mallory", None])
def test_unknown_key_or_no_key_gets_nothing(secure_daemon, keys, name):
    sock = raw_curve_socket(secure_daemon, keys, name)
    sock.send_multipart([b"", json.dumps({"v": 1, "id": "let-me-in", "op": "hello"}).encode()])
    assert not sock.poll(1500), "the daemon answered a client it does not know"
    sock.close()
    # the project's client notices the refused handshake and says so
    curve = None if name is None else curve_keys(keys / "server" / "server.key",
                                                 keys / name / f"{name}.key_secret")
    with LabClient(secure_daemon.endpoint, timeout_s=2.0, retries=0, curve=curve) as client, \
            pytest.raises((Unauthorized, ReplyTimeout)):
        client.hello()


def test_removed_key_is_refused_on_its_next_connection(secure_daemon, keys):
    carol_dir = keys / "carol"
    labd("keys", "client", "carol", carol_dir)
    clients = keys / "clients.toml"
    labd("keys", "add", "carol", carol_dir / "carol.key", "--clients", clients)
    with client_for(secure_daemon, keys, "carol") as carol:
        assert carol.hello()["server"] == "labd"
    assert labd("keys", "remove", "carol", "--clients", clients).returncode == 0
    with client_for(secure_daemon, keys, "carol", timeout_s=1.0) as carol, \
            pytest.raises(Unauthorized):
        carol.hello()


def test_non_loopback_bind_without_keys_is_refused():
    out = labd("serve", "--bind", f"tcp://0.0.0.0:{free_port()}", "--store", "",
               "--events", "")
    assert out.returncode == 2
    assert "refusing to bind" in out.stderr and "--insecure" in out.stderr


def test_restricting_systems_needs_curve(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text(loopback("laser", 2, clients=["alice"]))
    out = labd("config", "--check", config)
    assert out.returncode == 2 and "curve = true" in out.stdout
