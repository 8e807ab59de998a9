"""`edgecompress search` (edgecompress/search/api.py and the CLI command)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from edgecompress.cli import cli, main

torch.set_num_threads(1)

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


def test_search_cli_lowrank_searches_rank_ratios_too(tmp_path, capsys) -> None:
    from support import zoo_checkpoint

    from edgecompress.graph import analyze
    from edgecompress.models.loading import load_model
    from edgecompress.devices.local import host_round_to
    from edgecompress.search.space import Policy, SearchSpace

    model = zoo_checkpoint(tmp_path, "resnet20", num_classes=10, in_channels=1, width_mult=0.5)  # 4x fewer MACs
    out = tmp_path / "s"
    args = ["search", model, "--strategy", "evolution", "--target", "macs=0.8", "--latency", "macs", "--episodes",
            "2", "--val-samples", "100", "--runtime", "onnxruntime", "--lowrank", "spatial-svd", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "search.json").read_text())
    loaded = load_model(model)
    total = analyze(loaded.model, (1, 28, 28)).total_macs
    assert summary["lowrank"] == "spatial-svd" and summary["best"]["macs"] <= 0.8 * total
    policy = Policy.load(out / "best_policy.json")
    assert policy.lowrank == "spatial-svd" and policy.rank == tuple(summary["best"]["rank"])
    space = SearchSpace.from_model(loaded.model, (1, 28, 28), round_to=host_round_to(), lowrank="spatial-svd")
    assert policy.rank_layers == space.rank_names and len(policy.rank) == len(space.ranks) > 1

    capsys.readouterr()
    assert main(args[:-3] + ["spatial-svdd", "--out", str(tmp_path / "t")]) == 2
    assert ("--lowrank 'spatial-svdd' is not a low-rank method (did you mean spatial-svd?); valid: svd, spatial-svd, "
            "tucker2, cp") in capsys.readouterr().err
    assert main(["search", model, "--strategy", "tas", "--target", "macs=0.5", "--lowrank", "svd", "--out",
                 str(tmp_path / "u")]) == 2
    assert "--lowrank adds rank ratios to a candidate search" in capsys.readouterr().err
    assert not (tmp_path / "t").exists() and not (tmp_path / "u").exists()
