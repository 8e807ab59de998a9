"""`edgecompress profile --device D`: build the per-op latency table of a device.

A click command the main CLI adds with `cli.add_command(profile)`; the runtimes and
the exporters are imported only when it runs.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("profile")
@click.option("--device", "device_spec", default="host", show_default=True, help="host, adb:SERIAL or a profile name.")
@click.option("--runtime", default="onnxruntime", show_default=True, help="onnxruntime or litert.")
@click.option("--threads", default=1, show_default=True, type=int, help="Runtime threads the table is for.")
@click.option("--grid", default="default", show_default=True,
              help="small, default (7-112 px maps), cifar (2-32 px maps) or a .json/.yaml grid file.")
@click.option("--out", "out", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="Table file [default: lut-<device>-<runtime>-t<threads>.json].")
@click.option("--resume", is_flag=True, help="Continue an interrupted table in --out (only missing blocks are measured).")
@click.option("--runs", default=30, show_default=True, help="Timed runs per block and trial.")
@click.option("--warmup", default=5, show_default=True, help="Untimed warm-up runs per trial.")
@click.option("--trials", default=1, show_default=True, help="Trials per block (fresh processes on the host).")
@click.option("--save-every", default=20, show_default=True, help="Write the table after this many new blocks.")
@click.option("--adb", "adb", default=None, help="adb executable for adb:SERIAL devices [default: $ADB, else PATH].")
def profile(device_spec: str, runtime: str, threads: int, grid: str, out: Path | None, resume: bool, runs: int,
            warmup: int, trials: int, save_every: int, adb: str | None) -> None:
    """Time every block of a grid on a device and store the per-op latency table (JSON)."""
    from edgecompress.devices import get_device
    from edgecompress.devices.base import check_measure_args
    from edgecompress.errors import UserError
    from edgecompress.latency.lut import describe_fingerprint, load_grid, profile_lut

    check_measure_args(threads, runs, warmup, trials)
    if save_every < 1:
        raise UserError(f"--save-every must be a positive integer, got {save_every}")
    grid_obj = load_grid(grid)
    device = get_device(device_spec, adb=adb)
    if out is None:
        out = Path(f"lut-{device.name.replace(':', '_')}-{runtime}-t{threads}.json")
    n = len(grid_obj.signatures(runtime if runtime in ("onnxruntime", "litert") else "onnxruntime", threads))
    click.echo(f"profiling {n} blocks of grid {grid_obj.name!r} on {device.name} "
               f"{describe_fingerprint(device.fingerprint())}, {runtime}, {threads} thread(s) -> {out}", err=True)
    lut = profile_lut(device, grid_obj, runtime=runtime, threads=threads, runs=runs, warmup=warmup, trials=trials,
                      out=out, resume=resume, save_every=save_every)
    click.echo(f"{len(lut)} blocks in {out} ({lut.runtime} {lut.runtime_version}, {lut.threads} thread(s))")
