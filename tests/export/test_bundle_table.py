from edgecompress.export.bundle import comparison_rows, render_markdown


def _variant(top1, params, macs, p50):
    lat = {"runtime": "litert", "runtime_version": "2.3.0", "threads": 1, "p50_ms": p50, "p90_ms": p50 * 1.2,
           "mean_ms": p50, "std_ms": 0.0, "runs": 50, "trials": 3}
    art = {"file": "model.tflite", "size_bytes": params * 4, "latency": [lat], "accuracy": {"top1": top1},
           "parity": {"max_abs_diff": 1e-6, "top1_agreement": 1.0}}
    return {"accuracy": {"top1": top1}, "params": params, "macs": macs, "artifacts": {"tflite": art}}


def _report(steps):
    return {
        "model": {"spec": "zoo:x", "input_shape": [1, 28, 28]}, "recipe": {"name": "r"},
        "device": {"name": "host", "fingerprint": {"id": "abc"}}, "dataset": {"name": "fashion-mnist", "split": "test", "n": 10},
        "steps_applied": steps, "created_utc": "now", "versions": {"edgecompress": "0"}, "notes": [],
        "variants": {"before": _variant(0.92, 1_000_000, 8_000_000, 2.0), "after": _variant(0.91, 500_000, 2_000_000, 1.0)},
    }


def test_ratios_when_compressed():
    rows = {r[0]: r[1:] for r in comparison_rows(_report(["prune"]))}
    assert rows["params"] == ("1.00 M", "500.00 k", "0.50x")
    assert rows["MACs"] == ("8.00 M", "2.00 M", "0.25x")
    assert rows["p50 ms, LiteRT 1T"] == ("2.000", "1.000", "2.00x faster")
    assert rows["top-1, TFLite file"] == ("92.00%", "91.00%", "")
    assert "| p50 ms, LiteRT 1T | 2.000 | 1.000 | 2.00x faster |" in render_markdown(_report(["prune"]))


def test_no_ratios_for_the_same_model():
    for _, _, _, ratio in comparison_rows(_report([])):
        assert ratio == ""


def test_a_baseline_variant_gets_its_own_column_and_ratio():
    report = _report(["search", "prune", "finetune"])
    v = report["variants"]
    report["variants"] = {"before": v["before"], "uniform": _variant(0.89, 600_000, 2_100_000, 1.25), "after": v["after"]}
    from edgecompress.export.bundle import comparison_header

    assert comparison_header(report) == ["metric", "before", "uniform", "after", "after vs before", "after vs uniform"]
    rows = {r[0]: r[1:] for r in comparison_rows(report)}
    assert rows["top-1, PyTorch"] == ("92.00%", "89.00%", "91.00%", "", "")
    assert rows["params"] == ("1.00 M", "600.00 k", "500.00 k", "0.50x", "0.83x")
    assert rows["p50 ms, LiteRT 1T"] == ("2.000", "1.250", "1.000", "2.00x faster", "1.25x faster")
    assert rows["p90 ms, LiteRT 1T"] == ("2.400", "1.500", "1.200", "2.00x", "1.25x")
    md = render_markdown(report)
    assert "| metric | before | uniform | after | after vs before | after vs uniform |" in md
    assert "| p50 ms, LiteRT 1T | 2.000 | 1.250 | 1.000 | 2.00x faster | 1.25x faster |" in md
    report["variants"]["uniform"]["artifacts"]["tflite"]["latency"][0]["p50_ms"] = 0.8
    rows = {r[0]: r[1:] for r in comparison_rows(report)}
    assert rows["p50 ms, LiteRT 1T"][-1] == "1.25x slower"  # never "0.80x faster"
