"""`edgecompress cache ls|clear`: look at and empty the latency cache.

A click group the main CLI adds with `cli.add_command(cache)`; rich is imported only
when a table is printed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from edgecompress.errors import UserError
from edgecompress.latency.cache import ENV_CACHE_DIR, LatencyCache, default_cache_path

_SQLITE_MAGIC = b"SQLite format 3\x00"

_path_option = click.option(
    "--path",
    "cache_path",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"Cache file [default: ${ENV_CACHE_DIR}/latency.sqlite, else ~/.cache/edgecompress/latency.sqlite].",
)


def _resolve(cache_path: Path | None) -> Path:
    """The cache file to open; a --path that is plainly some other file is refused.

    LatencyCache moves an unreadable file aside and starts afresh, which is right for
    the default cache but not for a model file passed to --path by mistake.
    """
    if cache_path is None:
        return default_cache_path()
    if cache_path.is_file() and cache_path.stat().st_size > 0:
        with open(cache_path, "rb") as f:
            if f.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
                raise UserError(
                    f"--path {str(cache_path)!r} is not an SQLite file; pass a latency cache "
                    f"(e.g. {default_cache_path()}) or leave --path out"
                )
    return cache_path


def _when(seconds: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds)) if seconds else "-"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


@click.group("cache")
def cache() -> None:
    """List or clear stored latency measurements."""


@cache.command("ls")
@_path_option
@click.option("--device", default=None, help="Only this device (fingerprint id or name, e.g. host).")
@click.option("--runtime", default=None, help="Only this runtime (onnxruntime or litert).")
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
def ls(cache_path: Path | None, device: str | None, runtime: str | None, as_json: bool) -> None:
    """List cached measurements, newest first."""
    path = _resolve(cache_path)
    if not path.exists():
        # Listing must not create a cache file as a side effect.
        click.echo("[]" if as_json else f"no latency cache at {path}")
        return
    with LatencyCache(path) as db:
        found = db.entries(device=device, runtime=runtime)
        stats = db.stats()
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"latency cache {path}")
    for col in ("device", "runtime", "threads", "p50 ms", "p90 ms", "artifact", "created", "hits"):
        table.add_column(col, justify="right" if col in ("threads", "p50 ms", "p90 ms", "hits") else "left")
    for e in found:
        flags = "".join(f" {k}={v}" for k, v in sorted(e["flags"].items()))
        table.add_row(
            f"{e['device_name']} ({e['device_id']})", f"{e['runtime']} {e['runtime_version']}{flags}",
            str(e["threads"]), f"{e['p50_ms']:.3f}", f"{e['p90_ms']:.3f}",
            f"{e['artifact_name']} {e['artifact_sha256'][:10]}", _when(e["created"]), str(e["hits"]),
        )  # fmt: skip
    console = Console()
    console.print(table)
    console.print(f"{len(found)} of {stats['entries']} entries shown; {_size(stats['size_bytes'])}; "
                  f"{stats['total_hits']} hits, {stats['total_misses']} misses in total")


@cache.command("clear")
@_path_option
@click.option("--device", default=None, help="Only this device's entries (fingerprint id or name); default: all.")
def clear(cache_path: Path | None, device: str | None) -> None:
    """Remove cached measurements (all, or one device's)."""
    path = _resolve(cache_path)
    if not path.exists():
        click.echo(f"removed 0 entries (no latency cache at {path})")
        return
    with LatencyCache(path) as db:
        removed = db.clear(device=device)
    what = f" of device {device}" if device else ""
    click.echo(f"removed {removed} entr{'y' if removed == 1 else 'ies'}{what} from {path}")
