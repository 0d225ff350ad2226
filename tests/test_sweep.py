"""chute.sweep: the table and picture a multirun ends with."""

from __future__ import annotations

import json
from pathlib import Path

from chute.sweep import collect, varying, write_summary


def _job(root: Path, name: str, overrides: list[str], acc: float, rate: float, seed: int | None = None) -> None:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    metrics = {"metrics": {"val/acc": acc}, "best_val/acc": acc, "train_samples_per_s": rate, "wall_time_s": 3.0}
    if seed is not None:
        metrics["seed"] = seed
    (run / "metrics.json").write_text(json.dumps(metrics))


def test_the_summary_ranks_jobs_and_shows_only_the_overrides_that_vary(tmp_path: Path) -> None:
    for i, (workers, acc) in enumerate([(0, 0.91), (2, 0.95), (1, 0.93)]):
        _job(tmp_path, str(i), [f"loader.num_workers={workers}", "trainer.max_epochs=3"], acc, 1000.0 + i)
    _job(tmp_path, "10", ["loader.num_workers=4", "trainer.max_epochs=3"], float("nan"), 900.0)  # a failed metric
    rows = collect(tmp_path)
    assert [r["job"] for r in rows] == ["0", "1", "2", "10"]  # jobs in numeric order
    assert varying(rows) == ["loader.num_workers"]
    ranked = write_summary(tmp_path)
    assert [r["job"] for r in ranked] == ["1", "2", "0", "10"]  # best first, no metric last
    table = (tmp_path / "summary.md").read_text()
    assert "trainer.max_epochs" not in table
    assert table.splitlines()[2].startswith("| job | loader.num_workers | val/acc |")
    assert (tmp_path / "summary.csv").read_text().splitlines()[1].startswith("1,2,0.95")
    assert (tmp_path / "summary.png").is_file()
    assert write_summary(tmp_path / "empty") == []


def test_the_seeds_drawn_under_seed_null_are_in_the_summary(tmp_path: Path) -> None:
    """``-m seed=null trainer.limit_train_batches=2,3``: each job drew its own seed, which was only in
    its metrics.json; the summary shows it (not when a seed override already varies, or all agree)."""
    _job(tmp_path, "0", ["seed=null", "trainer.limit_train_batches=2"], 0.9, 1000.0, seed=1412408922)
    _job(tmp_path, "1", ["seed=null", "trainer.limit_train_batches=3"], 0.8, 1000.0, seed=1131930184)
    write_summary(tmp_path)
    lines = (tmp_path / "summary.csv").read_text().splitlines()
    assert lines[0].startswith("job,trainer.limit_train_batches,seed,val/acc")
    assert lines[1].startswith("0,2,1412408922,0.9")
    for job in ("2", "3"):
        _job(tmp_path / "same", job, ["seed=7", f"loader.num_workers={job}"], 0.5, 1.0, seed=7)
    write_summary(tmp_path / "same")
    assert ",seed," not in (tmp_path / "same" / "summary.csv").read_text().splitlines()[0]


def test_jobs_of_data_options_with_different_metrics_are_ranked_each_by_its_own(tmp_path: Path) -> None:
    """``-m data=tabular,multitask``: the multitask job optimizes val/loss (min), and the summary
    showed it with a blank val/acc, ranked by val/acc."""
    for name, metric, mode, value in (("0", "val/acc", "max", 0.9), ("1", "val/loss", "min", 0.4),
                                      ("2", "val/loss", "min", 0.3), ("3", "val/acc", "max", 0.95)):  # fmt: skip
        run = tmp_path / name
        (run / ".hydra").mkdir(parents=True)
        data = "multitask" if metric == "val/loss" else "tabular"
        (run / ".hydra" / "overrides.yaml").write_text(f"- data={data}\n- seed={name}\n")
        (run / ".hydra" / "config.yaml").write_text(f"optimized_metric: {metric}\noptimized_mode: {mode}\n")
        (run / "metrics.json").write_text(json.dumps({f"best_{metric}": value, "train_samples_per_s": 1.0}))
    ranked = write_summary(tmp_path)
    assert [(r["job"], r["metric"], r["value"]) for r in ranked] == [
        ("3", "val/acc", 0.95), ("0", "val/acc", 0.9), ("2", "val/loss", 0.3), ("1", "val/loss", 0.4),
    ]  # fmt: skip
    table = (tmp_path / "summary.md").read_text().splitlines()
    assert "different metrics (val/acc max, val/loss min)" in table[0]
    assert table[2].startswith("| job | data | seed | metric | best |")
    assert table[6].startswith("| 2 | multitask | 2 | val/loss | 0.3 |")


def test_the_picture_of_jobs_with_different_metrics_says_each_bars_metric(tmp_path: Path) -> None:
    """One value axis held accuracies and losses, zoomed on their spread, with bare numbers: 0.3
    (a loss, lower is better) read as a worse accuracy than 0.9."""
    from chute.sweep import _plot

    rows = [
        {"job": job, "overrides": {"data": data}, "metric": metric, "value": value, "train_samples_per_s": 5.0}
        for job, data, metric, value in (("0", "tabular", "val/acc", 0.9), ("1", "multitask", "val/loss", 0.3))
    ]
    figure = _plot(tmp_path / "p.png", rows, ["data"], "best of each job's metric")
    values = figure.axes[0]
    assert [t.get_text() for t in values.texts] == ["0.9 val/acc", "0.3 val/loss"]
    assert values.get_xlim()[0] == 0.0
    same = _plot(tmp_path / "q.png", rows[:1] * 2, ["data"], "val/acc")
    assert [t.get_text() for t in same.axes[0].texts] == ["0.9", "0.9"]
    diverged = [{**rows[1], "value": float("inf")}, {**rows[1], "value": 0.3}]  # set_xlim refused inf
    assert [t.get_text() for t in _plot(tmp_path / "r.png", diverged, ["data"], "val/loss").axes[0].texts] == ["0.3"]
