"""``labd keys``: CURVE key pairs and the daemon's allow-list of clients.

    labd keys server DIR                     make the daemon's key pair (DIR/server.key[_secret])
    labd keys client NAME DIR                make a client's key pair (DIR/NAME.key[_secret])
    labd keys add NAME KEYFILE --clients F   allow a client (its public .key file) under NAME
    labd keys remove NAME --clients F        withdraw a client
    labd keys list --clients F               the allowed clients

Give clients the server's public ``server.key``; keep every ``.key_secret`` where it was made.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import zmq.auth

from labd.daemon.auth import NAME_PATTERN, AllowList


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="create CURVE keys and manage the client allow-list",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ks = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    s = ks.add_parser("server", help="create the daemon's key pair")
    s.add_argument("dir", type=Path)
    s.set_defaults(func=make_server)
    c = ks.add_parser("client", help="create a client's key pair")
    c.add_argument("name")
    c.add_argument("dir", type=Path)
    c.set_defaults(func=make_client)
    a = ks.add_parser("add", help="allow a client's public key under a name")
    a.add_argument("name")
    a.add_argument("key_file", type=Path, help="the client's public NAME.key file")
    a.add_argument("--clients", type=Path, required=True, help="the allow-list TOML file")
    a.set_defaults(func=add)
    r = ks.add_parser("remove", help="withdraw a client")
    r.add_argument("name")
    r.add_argument("--clients", type=Path, required=True)
    r.set_defaults(func=remove)
    lst = ks.add_parser("list", help="list the allowed clients")
    lst.add_argument("--clients", type=Path, required=True)
    lst.set_defaults(func=show)


def _check_name(name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise SystemExit(f"labd keys: {name!r}: use 1-64 letters, digits, '.', '_' or '-'")


def make_server(args: argparse.Namespace) -> int:
    args.dir.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(args.dir, "server")
    print(f"server public key: {public}  (give this file to clients)")
    print(f"server secret key: {secret}  (keep on the lab PC; [security] server_key)")
    return 0


def make_client(args: argparse.Namespace) -> int:
    _check_name(args.name)
    args.dir.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(args.dir, args.name)
    print(f"client public key: {public}  (the lab adds it: labd keys add {args.name} ...)")
    print(f"client secret key: {secret}  (stays with the client)")
    return 0


def _write(path: Path, clients: dict[str, str]) -> None:
    lines = ["# labd client allow-list: managed by `labd keys add/remove`.", ""]
    for name, key in sorted(clients.items()):
        lines += [f"[clients.{name}]", f'public_key = "{key}"', ""]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)


def add(args: argparse.Namespace) -> int:
    _check_name(args.name)
    public, _ = zmq.auth.load_certificate(str(args.key_file))
    clients = AllowList(args.clients).load()
    clients[args.name] = public.decode()
    args.clients.parent.mkdir(parents=True, exist_ok=True)
    _write(args.clients, clients)
    print(f"allowed {args.name} ({public.decode()}) in {args.clients}")
    return 0


def remove(args: argparse.Namespace) -> int:
    clients = AllowList(args.clients).load()
    if clients.pop(args.name, None) is None:
        print(f"labd keys: no client {args.name!r} in {args.clients}")
        return 1
    _write(args.clients, clients)
    print(f"removed {args.name} from {args.clients}")
    return 0


def show(args: argparse.Namespace) -> int:
    for name, key in sorted(AllowList(args.clients).load().items()):
        print(f"{name:<24}{key}")
    return 0
