"""``labd data info|export``: what the measurement store holds, and its arrays as ``.npz``.

* ``labd data info --store PATH [--json]``: measurements, rows and bytes per system, runs,
  systems served without recording, the next sequence number.
* ``labd data export --store PATH --out FILE.npz [--system S] [--since ISO] [--until ISO]
  [--run N] [--client C]``: the selected rows as ``x [n, in]``, ``theta [n, P]`` (broadcast to
  one row per row), ``y [n, out]`` float32 and ``seq [n]`` int64, ``received [n]`` float64
  (UNIX s). Streamed: each array is written chunk by chunk into the archive, so a store larger
  than memory exports. The selection must have one set of dimensions (pick ``--system``, and
  ``--run`` if the system's dimensions changed).
"""

from __future__ import annotations

import argparse
import json
import logging
import zipfile
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import numpy as np

log = logging.getLogger("labd.data")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect and export the measurement store",
                       description="Inspect and export the measurement store.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    info = actions.add_parser("info", help="counts and sizes per system, and the runs")
    info.add_argument("--store", required=True, metavar="PATH", help="the store file")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=run_info)
    export = actions.add_parser("export", help="selected measurements to an .npz archive")
    export.add_argument("--store", required=True, metavar="PATH", help="the store file")
    export.add_argument("--out", required=True, metavar="FILE.npz", help="the archive to write")
    export.add_argument("--system", help="only this system")
    export.add_argument("--since", type=datetime.fromisoformat, metavar="ISO",
                        help="only requests received at or after this time (local if no zone)")
    export.add_argument("--until", type=datetime.fromisoformat, metavar="ISO",
                        help="only requests received before this time")
    export.add_argument("--run", type=int, help="only this run (see `labd data info`)")
    export.add_argument("--client", help="only this client identity")
    export.set_defaults(func=run_export)


def _time(t: float | None) -> str:
    return "-" if t is None else datetime.fromtimestamp(t).isoformat(timespec="seconds")


def run_info(args: argparse.Namespace) -> int:
    from labd.store.reader import StoreReader

    with StoreReader(args.store) as reader:
        info = reader.info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"store {info['path']}: {info['store_bytes'] / 2**20:.1f} MiB (database "
          f"{info['database_bytes'] / 2**20:.1f} MiB, array segments "
          f"{info['blob_bytes'] / 2**20:.1f} MiB), schema v{info['schema_version']}, next seq "
          f"{info['next_seq']}")
    print(f"{'system':<16} {'measurements':>12} {'rows':>10} {'MiB':>10}  first .. last")
    for name, s in info["systems"].items():
        print(f"{name:<16} {s['measurements']:>12} {s['rows']:>10} {s['bytes'] / 2**20:>10.2f}"
              f"  {_time(s['first'])} .. {_time(s['last'])}")
    for name, u in info["unrecorded"].items():
        print(f"{name:<16} not recorded: {u['requests']} requests, {u['rows']} rows")
    print(f"runs: {len(info['runs'])}")
    for r in info["runs"]:
        print(f"  run {r['id']:<5} {_time(r['started'])}  {r['host']}  "
              f"{r['measurements']} measurements")
    return 0


def _write_npy(zf: zipfile.ZipFile, name: str, dtype: np.dtype, shape: tuple[int, ...],
               chunks: Iterator[np.ndarray]) -> None:
    """Write one ``name.npy`` member of known shape from a stream of chunks."""
    with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_2_0(
            f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                "shape": shape})
        written = 0
        for chunk in chunks:
            f.write(np.ascontiguousarray(chunk, dtype=dtype).tobytes())
            written += chunk.shape[0]
    if written != shape[0]:
        raise RuntimeError(f"{name}: {written} rows written, {shape[0]} expected (the store "
                           f"changed during the export?)")


def run_export(args: argparse.Namespace) -> int:
    from labd.store.reader import StoreReader

    filters: dict[str, Any] = {"system": args.system, "since": args.since,
                               "until": args.until, "run": args.run, "client": args.client}
    with StoreReader(args.store) as reader:
        dims = reader.dimensions(**filters)
        if len(dims) != 1:
            log.error("the selection has %s; choose --system (and --run)",
                      "no measurements" if not dims else f"several dimensions {sorted(dims)}")
            return 2
        (n_in, n_p, n_out), = dims
        n, rows, _ = reader.count(**filters)

        def stream(pick: Callable[[Any], np.ndarray]) -> Iterator[np.ndarray]:
            return (pick(rec) for rec in reader.records(**filters))

        with zipfile.ZipFile(args.out, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            f4 = np.dtype("<f4")
            _write_npy(zf, "x", f4, (rows, n_in), stream(lambda r: r.x))
            _write_npy(zf, "theta", f4, (rows, n_p), stream(lambda r: r.theta_rows()))
            _write_npy(zf, "y", f4, (rows, n_out), stream(lambda r: r.y))
            _write_npy(zf, "seq", np.dtype("<i8"), (rows,),
                       stream(lambda r: np.arange(r.seq, r.seq + r.rows)))
            _write_npy(zf, "received", np.dtype("<f8"), (rows,),
                       stream(lambda r: np.full(r.rows, r.received)))
    print(f"exported {n} measurements ({rows} rows) to {args.out}")
    return 0

