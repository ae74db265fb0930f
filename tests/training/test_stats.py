"""training.stats: the Student-t quantile against the published table, intervals and verdicts by hand."""

from __future__ import annotations

import math

import pytest

from training.report import claim_rows, paired
from training.stats import mean_interval, t_quantile, verdict

# two-sided 95% critical values t_{0.975, df} from the standard table (e.g. NIST/SEMATECH e-Handbook, 1.3.6.7.2)
TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 10: 2.228, 20: 2.086, 30: 2.042}


@pytest.mark.parametrize(("df", "expected"), sorted(TABLE.items()))
def test_t_quantile_matches_the_table(df: int, expected: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=2e-3)


def test_t_quantile_other_levels_and_bad_input() -> None:
    assert t_quantile(0.95, 2) == pytest.approx(2.920, abs=2e-3)  # one-sided 95%, df 2 (same table)
    assert t_quantile(0.995, 5) == pytest.approx(4.032, abs=2e-3)
    for p, df in ((0.5, 3), (1.0, 3), (0.975, 0)):
        with pytest.raises(ValueError):
            t_quantile(p, df)


def test_mean_interval_by_hand() -> None:
    # values 1, 2, 6: mean 3, sample sd sqrt(((−2)² + (−1)² + 3²) / 2) = sqrt(7); half = 4.303 · sqrt(7) / sqrt(3)
    got = mean_interval([1.0, 2.0, 6.0])
    assert got.mean == pytest.approx(3.0) and got.n == 3
    assert got.half == pytest.approx(4.3027 * math.sqrt(7) / math.sqrt(3), rel=1e-3)
    one = mean_interval([5.0])
    assert one.mean == 5.0 and math.isnan(one.half)
    with pytest.raises(ValueError):
        mean_interval([])


def test_verdicts() -> None:
    assert verdict(mean_interval([2.0, 3.0, 4.0])) == "holds"
    assert verdict(mean_interval([-2.0, -3.0, -4.0])) == "reversed"
    assert verdict(mean_interval([-1.0, 3.0, 1.0])) == "not resolved at this budget"
    assert verdict(mean_interval([9.0])) == "not resolved at this budget"  # one seed: no interval
    assert verdict(mean_interval([2.0, 2.0])) == "not resolved at this budget"  # two seeds, zero width: too few
    assert verdict(mean_interval([2.0, 2.0]), min_n=2) == "holds"


def _rec(task: str, row: str, seed: int, top1: float) -> dict[str, object]:
    return {"task": task, "row": row, "seed": seed, "top1": top1}


def test_paired_differences_follow_the_seed() -> None:
    records = [_rec("t", "a", 0, 0.50), _rec("t", "a", 1, 0.60), _rec("t", "a", 2, 0.55),
               _rec("t", "b", 0, 0.40), _rec("t", "b", 1, 0.55), _rec("t", "b", 2, 0.45),
               _rec("t", "b", 3, 0.99),  # seed 3 has no "a": not paired
               _rec("u", "a", 0, 0.10)]  # fmt: skip
    diff = paired(records, "a", "b", "t")
    assert diff is not None and diff.n == 3
    expected = mean_interval([10.0, 5.0, 10.0])  # points, seed by seed
    assert diff.mean == pytest.approx(expected.mean) and diff.half == pytest.approx(expected.half)
    assert paired(records, "a", "b", "u") is None
    (line,) = claim_rows(records, [("a beats b", "a", "b", ("t", "missing"))])
    assert line["task"] == "t" and line["verdict"] == verdict(expected)


def test_an_interval_is_never_narrower_than_one_validation_clip() -> None:
    """The standard run's AdaptMLP − linear on `order`: +1 clip of 402 on every seed gave [+0.25, +0.25] and
    "holds"; top-1 moves in steps of one clip, so the interval is at least ± that step."""
    step = 100 / 402
    assert mean_interval([step] * 3, resolution=step).half == pytest.approx(step)
    assert verdict(mean_interval([step] * 3, resolution=step)) == "not resolved at this budget"
    assert verdict(mean_interval([5.0] * 3, resolution=step)) == "holds"  # seeds that agree far above a step
    wide = mean_interval([1.0, 2.0, 6.0], resolution=step)
    assert wide.half == pytest.approx(mean_interval([1.0, 2.0, 6.0]).half)  # a wider t-interval is kept
    records = [{"task": "order", "row": r, "seed": s, "top1": top1, "val_clips": 402}
               for s in range(3) for r, top1 in (("a", 0.5 + 1 / 402), ("b", 0.5))]
    diff = paired(records, "a", "b", "order")
    assert diff is not None and diff.half == pytest.approx(step) and verdict(diff) != "holds"
