"""Collate functions: nested samples, variable-length fields, no None in batches; configurable per DataModule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from chute.app import build_datamodule
from chute.collate import collate_nested, pad_stack, resolve_collate
from chute.config import validate_config
from chute.errors import ConfigError, DataError
from tests.helpers import assert_mentions
from tests.test_config import make_config


def tagged_collate(batch: list[Any]) -> dict[str, Any]:
    """A user's collate function, referenced from config by its dotted path."""
    return {"collated_by": "tagged_collate", "size": len(batch), "first": batch[0]}


def test_nested_dicts_and_tuples_stack_field_by_field() -> None:
    samples = [
        {"image": torch.zeros(1, 2, 2), "meta": {"id": i, "score": 0.5 * i}, "pair": (i, torch.ones(3))}
        for i in range(4)
    ]
    batch = collate_nested(samples)
    assert batch["image"].shape == (4, 1, 2, 2)
    assert batch["meta"]["id"].tolist() == [0, 1, 2, 3]
    assert batch["meta"]["score"].dtype == torch.float64
    assert batch["pair"][1].shape == (4, 3)


def test_variable_length_fields_are_padded_with_lengths() -> None:
    samples = [{"tokens": torch.arange(n), "frames": torch.ones(n, 2)} for n in (3, 1, 2)]
    batch = collate_nested(samples, pad_value=-1)
    assert batch["tokens"].tolist() == [[0, 1, 2], [0, -1, -1], [0, 1, -1]]
    assert batch["tokens_lengths"].tolist() == [3, 1, 2]
    assert batch["frames"].shape == (3, 3, 2)
    assert batch["frames_lengths"].tolist() == [3, 1, 2]


@pytest.mark.parametrize(
    ("samples", "parts"),
    [
        ([{"x": 1, "y": None}, {"x": 2, "y": 3}], ["field 'y'", "None", "1 of 2"]),
        ([{"x": 1}, {"z": 2}], ["'x'", "missing"]),
        ([(1, 2), (1,)], ["different numbers of elements"]),
        ([{"x": torch.ones(2, 3)}, {"x": torch.ones(3, 4)}], ["after the first dimension"]),
    ],
)
def test_malformed_batches_are_explained(samples: list[Any], parts: list[str]) -> None:
    with pytest.raises(DataError) as info:
        collate_nested(samples)
    assert_mentions(str(info.value), *parts)


def test_pad_stack_keeps_dtype() -> None:
    out = pad_stack([torch.tensor([1, 2], dtype=torch.int16), torch.tensor([3], dtype=torch.int16)])
    assert out.dtype == torch.int16
    assert out.tolist() == [[1, 2], [3, 0]]


def test_resolve_collate_accepts_callables_and_dotted_paths() -> None:
    assert resolve_collate(None, collate_nested) is collate_nested
    assert resolve_collate("chute.collate.collate_nested", pad_stack) is collate_nested
    with pytest.raises(ConfigError) as info:
        resolve_collate("chute.collate.nothing_here", collate_nested)
    assert info.value.key == "collate_fn"


@pytest.mark.parametrize(
    "override",
    [
        "+data.collate_fn=tests.test_collate.tagged_collate",
        "+data.collate_fn={_target_:tests.test_collate.tagged_collate,_partial_:true}",
    ],
)
@pytest.mark.parametrize("data", ["digits", "tabular", "sequence"])
def test_collate_is_configurable_per_data_option(override: str, data: str, digits_root: Path) -> None:
    cfg = make_config(f"data={data}", override.replace("+", "", 1), data_dir=digits_root.parent)
    dm = build_datamodule(cfg, validate_config(cfg))
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["collated_by"] == "tagged_collate"


class _Rows(torch.utils.data.Dataset):
    """Samples with a small field and one whose batch is over the inline limit."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict[str, Any]:
        from chute.loader.buffers import INLINE_BYTES

        return {
            "x": torch.full((30,), float(index)),
            "big": torch.full((INLINE_BYTES // 4 // 4 + 1,), float(index)),  # a batch of 4: over the limit
            "y": index,
        }


def test_collate_nested_stacks_a_small_field_where_it_crosses_inside_the_message() -> None:
    """In a worker default_collate stacks into a new shared-memory file, which crosses to the main
    process at ~0.8 ms a tensor: a small field (a stream's rows) is stacked in plain memory instead,
    and crosses inside the message; a large one still goes torch's way, stacked in shared memory."""
    from chute.loader import LoaderSettings, build_loader

    settings = LoaderSettings(batch_size=4, num_workers=1, shuffle=False)
    loader = build_loader(_Rows(), settings, train=False, seed=0, collate_fn=collate_nested)
    batches = list(loader)
    assert [b["y"].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    for batch in batches:
        torch.testing.assert_close(batch["x"], batch["y"].float().view(4, 1).expand(4, 30))
        assert batch["big"].shape == (4, batch["big"].shape[1])
        assert not batch["x"].is_shared()
        assert not batch["y"].is_shared()
        assert batch["big"].is_shared()
