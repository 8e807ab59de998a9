import math

import pytest

from edgecompress.latency.stats import median_of_trials, percentile, summarize


def test_summarize_known_samples():
    s = summarize([float(v) for v in range(1, 11)])  # 1..10 ms
    assert s["p50"] == pytest.approx(5.5)
    assert s["p90"] == pytest.approx(9.1)  # linear: 9 + 0.1 * (10 - 9)
    assert s["mean"] == pytest.approx(5.5)
    assert s["std"] == pytest.approx(math.sqrt(8.25))  # population std
    assert (s["min"], s["max"], s["runs"]) == (1.0, 10.0, 10)


def test_summarize_odd_count_and_single_sample():
    s = summarize([3.0, 1.0, 2.0, 100.0, 4.0])
    assert s["p50"] == 3.0
    assert s["p90"] == pytest.approx(61.6)  # rank 3.6 between 4 and 100
    one = summarize([2.5])
    assert (one["p50"], one["p90"], one["std"], one["runs"]) == (2.5, 2.5, 0.0, 1)


def test_percentile_bounds():
    assert percentile([1.0, 2.0, 3.0, 4.0], 25) == pytest.approx(1.75)
    with pytest.raises(ValueError, match="101"):
        percentile([1.0], 101)


@pytest.mark.parametrize("bad", [[], [1.0, -0.5], [1.0, float("nan")], [float("inf")]])
def test_summarize_rejects_bad_samples(bad):
    with pytest.raises(ValueError, match="samples_ms"):
        summarize(bad)


def test_median_of_trials_ignores_one_slow_trial():
    trials = [[1.0, 2.0, 3.0], [2.0, 3.0, 4.0], [50.0, 60.0, 70.0]]
    # per-trial p50s 2, 3, 60 -> median 3; the pooled p50 would be 3 too but the mean is ~21.
    assert median_of_trials(trials) == 3.0
    assert median_of_trials([[1.0, 2.0], [3.0, 4.0]]) == pytest.approx(2.5)  # p50s 1.5, 3.5
    with pytest.raises(ValueError, match="at least one trial"):
        median_of_trials([])
