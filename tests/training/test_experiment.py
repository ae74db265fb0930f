"""``experiment --preset smoke``: the whole pipeline (pretrain, data, every kind of row, report) in seconds."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from training.experiment import PRESETS, plan_rows, plan_runs, run_experiment
from vpetl.data.readers import open_dataset


def test_mini_plan_has_the_paper_rows() -> None:
    rows = {r.key: r for r in plan_rows(PRESETS["mini"])}
    for key in (
        "linear",
        "bitfit",
        "lora-d16",
        "adaptmlp-d64",
        "prefix-d128",
        "full",
        "patt-d32",
        "patt-d64",
        "patt-d128",
        "bapat-d32",
        "bapat-d64",
        "bapat-d128",
        "patt-d128-qk",
        "patt-d128-qv",
        "patt-d128-qkv",
        "patt-d128-s0.2",
        "patt-d128-s0.5",
        "patt-d128-s1.0",
    ):
        assert key in rows
    runs = plan_runs(PRESETS["mini"])
    assert len(runs) >= 60 and len({(t, r.key, s) for t, r, s in runs}) == len(runs)


def test_standard_plan_pairs_every_claim_on_three_seeds() -> None:
    preset = PRESETS["standard"]
    rows = {r.key for r in plan_rows(preset)}
    runs = {(t, r.key, s) for t, r, s in plan_runs(preset)}
    assert preset.tasks == ("temporal", "order", "appearance") and preset.val_clips >= 400
    assert len(preset.claims) >= 7
    for _, a, b, tasks in preset.claims:
        assert {a, b} <= rows
        for task in tasks:
            for seed in range(3):
                assert (task, a, seed) in runs and (task, b, seed) in runs, (task, a, b, seed)


def test_smoke_experiment_writes_csv_markdown_and_plot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    summary = run_experiment("smoke", out, data_dir=tmp_path / "data", progress=False)
    with (out / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == summary["runs"] == len(plan_runs(PRESETS["smoke"]))
    assert {r["task"] for r in rows} == {"temporal", "appearance"}
    assert {r["method"] for r in rows} == {"linear", "bitfit", "full", "patt", "bapat"}
    assert all(int(r["trainable_params"]) > 0 for r in rows)
    # top-1 is a count of correct validation clips over their number: a multiple of 1/n for the task's n clips
    for task in ("temporal", "appearance"):
        (root,) = (tmp_path / "data" / "cache" / "data").glob(f"{task}-*")
        n_val = len(open_dataset(root, "val"))  # the split files the synthesizer wrote
        assert n_val > 0
        assert n_val >= PRESETS["smoke"].val_clips  # val_clips per task, whatever the class count
        for r in (r for r in rows if r["task"] == task):
            assert int(r["val_clips"]) == n_val
            correct = float(r["top1"]) * n_val
            # the CSV rounds top-1 to 5 decimals: n_val · 5e-6 of slack
            assert abs(correct - round(correct)) <= n_val * 5e-6 and 0 <= round(correct) <= n_val, (task, r["top1"])
    md = (out / "results.md").read_text()
    assert "| Method | d |" in md and "±" in md and "PATT positions" in md and "PATT scale" in md
    # the claims table: one line per (claim, task), each with its interval over the 2 seeds and a verdict
    claims = [line for line in md.splitlines() if line.startswith(("| BAPAT ≥ PATT |", "| s = 0.8 beats"))]
    assert len(claims) == 3 and all(line.rstrip(" |").endswith(("holds", "reversed", "budget")) for line in claims)
    assert all("| 2 |" in line for line in claims)
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a second run of the same experiment resumes: nothing is trained again (the cause, not the wall time)
    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("training.experiment.train_adapter", no_training)
    again = run_experiment("smoke", out, data_dir=tmp_path / "data", progress=False)
    assert again["runs"] == summary["runs"]
    with (out / "results.csv").open() as fh:
        assert list(csv.DictReader(fh)) == rows


def test_the_fingerprint_sees_the_pretraining_recipe_as_its_cache_key_does() -> None:
    """Adding the masked-video fields to PretrainConfig must not orphan the rows of a supervised experiment: the
    preset's pretrain recipe is recorded (and fingerprinted) as the cache key sees it."""
    recorded = PRESETS["standard"].to_dict()["pretrain"]
    assert recorded == PRESETS["standard"].pretrain.key_dict() and "objective" not in recorded
