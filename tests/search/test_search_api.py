"""`edgecompress search` (edgecompress/search/api.py and the CLI command)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgecompress.cli import cli, main

DEMO = str(Path(__file__).resolve().parents[2] / "models" / "demo" / "fmnist_mobilenetv2.pt")


def test_search_cli_runs_resumes_and_rejects_bad_input(tmp_path, capsys) -> None:
    out = tmp_path / "s"
    args = ["search", DEMO, "--strategy", "random", "--target", "macs=0.6", "--latency", "macs", "--episodes", "2",
            "--val-samples", "200", "--runtime", "onnxruntime", "--out", str(out)]
    runner = CliRunner()
    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    summary = json.loads((out / "search.json").read_text())
    assert summary["episodes"] == 2 and summary["best"]["macs"] <= 0.6 * 6_773_088 + 1
    measured = summary["best_measured"]
    assert measured["best_p50_ms"] > 0 and measured["speedup"] == pytest.approx(
        measured["original_p50_ms"] / measured["best_p50_ms"])
    assert {"search_log.json", "best_policy.json", "search.png", "search_state.pt"} <= {p.name for p in out.iterdir()}
    again = runner.invoke(cli, args + ["--resume"])
    assert again.exit_code == 0, again.output  # nothing left to do at 2 episodes: same result
    more = runner.invoke(cli, [a if a != "2" else "3" for a in args] + ["--resume"])
    assert more.exit_code == 0 and json.loads((out / "search.json").read_text())["episodes"] == 3

    def error(argv: list[str]) -> str:  # main() maps UserError to one stderr line and exit code 2
        assert main(argv) == 2
        return capsys.readouterr().err

    capsys.readouterr()
    assert "pass --resume" in error(args)
    assert ("unknown search strategy 'amx' (did you mean amc?); valid: amc, evolution, random, scas, snas, tas, "
            "uniform") in error(
        args[:3] + ["amx"] + args[4:-1] + [str(tmp_path / "t")])
    assert "nothing to resume" in error(args[:-1] + [str(tmp_path / "u"), "--resume"])
    assert "is a latency" in error(["search", DEMO, "--target", "latency=0.5", "--latency", "macs", "--out",
                                    str(tmp_path / "v")])
    assert not (tmp_path / "t").exists() and not (tmp_path / "v").exists()
