"""Real multi-process DDP on the CPU (gloo): chute's samplers partition one shared draw across ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.ddp
@pytest.mark.parametrize("strategy", ["weighted_sampler", "balanced_batches"])
def test_two_rank_fit_sees_exactly_the_draw_split_between_ranks(strategy: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "ddp_fit.py"), str(tmp_path), strategy],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert {r["sampler"] for r in ranks} == {"WeightedDraw" if strategy == "weighted_sampler" else "BalancedBatchDraw"}
    draw = ranks[0]["draw_rows"]
    assert ranks[1]["draw_rows"] == draw  # both ranks drew the same epoch
    id_of_row = {int(k): v for k, v in ranks[0]["id_of_row"].items()}
    # What each rank actually received, in order, is its share of the draw: items r, r + 2, ...
    for rank in (0, 1):
        expected = [id_of_row[row] for item in draw[rank::2] for row in item]
        assert ranks[rank]["ids"] == expected
    received = sorted(ranks[0]["ids"] + ranks[1]["ids"])
    assert received == sorted(id_of_row[row] for item in draw for row in item)  # the union is the draw
    labels = ranks[0]["row_labels"]
    per_class = [sum(1 for item in draw for row in item if labels[row] == c) for c in range(3)]
    assert ranks[0]["received"] == per_class  # ClassHistogram summed both ranks
    assert max(per_class) / min(per_class) < 2  # the table's ratio is 6
    assert (tmp_path / "class_histogram.png").is_file()


def _expected_val_loss() -> float:
    import torch

    from tests.ddp_eval import VAL_SAMPLES, logits_of

    ids = torch.arange(VAL_SAMPLES)
    return float(torch.nn.functional.cross_entropy(logits_of(ids), ids % 3))


FAST_CASES = {
    ("table", 2, 0), ("image", 3, 2), ("sequence", 2, 2), ("multitask", 3, 0), ("stream", 3, 2), ("litdata", 2, 0),
}  # fmt: skip
KINDS = ("table", "image", "sequence", "multitask", "stream", "litdata")
ALL_CASES = [(k, p, w) for k in KINDS for p in (2, 3) for w in (0, 2)]


@pytest.mark.ddp
@pytest.mark.parametrize(
    ("kind", "processes", "workers"),
    [c if c in FAST_CASES else pytest.param(*c, marks=pytest.mark.slow) for c in ALL_CASES],
)
def test_each_sample_once_per_epoch_under_ddp(kind: str, processes: int, workers: int, tmp_path: Path) -> None:
    from tests.ddp_eval import TRAIN_IMAGES, VAL_SAMPLES

    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "ddp_eval.py"), str(tmp_path), kind, str(processes), str(workers)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"eval-rank{r}.json").read_text()) for r in range(processes)]
    assert [r["world"] for r in ranks] == [processes] * processes
    # Validation: every sample exactly once (no padding duplicates, none lost), shares within one.
    seen = sorted(i for r in ranks for i in r["val_ids"])
    assert seen == list(range(VAL_SAMPLES))
    shares = [len(r["val_ids"]) for r in ranks]
    assert max(shares) - min(shares) <= 1
    for r in ranks:  # the logged loss is the mean over each sample once, the same on every rank
        assert r["val_loss"] == pytest.approx(_expected_val_loss(), rel=1e-5)
    # Training: the same number of steps on every rank (else gradient all-reduce would hang), every
    # sample at least once, and repeats only to even out the ranks (at most processes - 1).
    assert len({r["train_batches"] for r in ranks}) == 1
    train = [i for r in ranks for i in r["train_ids"]]
    expected = set(range(TRAIN_IMAGES if kind == "image" else VAL_SAMPLES))
    assert set(train) == expected
    if kind == "stream":  # ranks even out by repeating whole batches of their first reader
        assert len(train) - len(expected) < processes * 4
    else:
        assert len(train) - len(expected) <= processes - 1
