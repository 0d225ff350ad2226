"""Real multi-process DDP on the CPU (gloo): chute's samplers partition one shared draw across ranks."""

from __future__ import annotations

from pathlib import Path

import pytest

from chute.loader.distributed import padded_share, rank_span
from tests.helpers import two_rank_records


@pytest.mark.ddp
@pytest.mark.parametrize(
    ("strategy", "seed"),
    [
        pytest.param("weighted_sampler", "3", marks=pytest.mark.slow),
        ("balanced_batches", "3"),
        ("balanced_batches", "null"),
    ],
)
def test_two_rank_fit_sees_exactly_the_draw_split_between_ranks(strategy: str, seed: str, tmp_path: Path) -> None:
    """With a null seed (lightning-hydra-template's default) rank 0 draws one and every rank uses it."""
    ranks = two_rank_records("ddp_fit.py", str(tmp_path), strategy, *([seed] if seed == "null" else []), out=tmp_path)
    assert ranks[0]["seed"] == ranks[1]["seed"]
    assert seed == "null" or ranks[0]["seed"] == 3
    assert {r["sampler"] for r in ranks} == {"WeightedDraw" if strategy == "weighted_sampler" else "BalancedBatchDraw"}
    draw = ranks[0]["draw_rows"]
    assert ranks[1]["draw_rows"] == draw  # both ranks drew the same epoch
    id_of_row = {int(k): v for k, v in ranks[0]["id_of_row"].items()}
    # What each rank actually received, in order, is its share of the draw (chute's one split rule)
    taken = []  # the items the ranks took: the draw, and a short share's repeated first item
    for rank in (0, 1):
        start, stop = rank_span(len(draw), 2, rank)
        share = draw[start:stop] + draw[start:stop][: padded_share(len(draw), 2) - (stop - start)]
        assert ranks[rank]["ids"] == [id_of_row[row] for item in share for row in item]
        taken += share
    assert len(taken) - len(draw) < 2
    assert sorted(ranks[0]["ids"] + ranks[1]["ids"]) == sorted(id_of_row[row] for item in taken for row in item)
    assert {tuple(item) for item in taken} == {tuple(item) for item in draw}  # the union is the draw
    labels = ranks[0]["row_labels"]
    per_class = [sum(1 for item in taken for row in item if labels[row] == c) for c in range(3)]
    assert ranks[0]["received"] == per_class  # ClassHistogram summed both ranks
    assert max(per_class) / min(per_class) < 2  # the table's ratio is 6
    assert (tmp_path / "class_histogram.png").is_file()


# Each sample once per epoch for every kind of data, under 2 and 3 ranks: tests/test_contract.py.
