"""MultiTaskDataModule: dict batches with one target per task, per-task encodings, errors naming the task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from chute.datamodules import MultiTaskDataModule
from chute.datasets import SklearnTable
from chute.errors import ConfigError, DataError
from chute.models import MultiTaskModel
from tests.datamodules.contract import check_datamodule

TASKS = {"cultivar": {"type": "classification"}, "alcohol": {"type": "regression"}}


@pytest.fixture(scope="module")
def wine_csv(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(SklearnTable("wine")(tmp_path_factory.mktemp("wine") / "wine.csv"))


def test_contract(wine_csv: str) -> None:
    def make() -> MultiTaskDataModule:
        return MultiTaskDataModule(wine_csv, tasks=TASKS, loader={"batch_size": 16})

    dm = check_datamodule(make, batch_size=16, cpu_dtype=torch.float32)
    batch = next(iter(dm.val_dataloader()))
    assert batch["targets"]["cultivar"].dtype == torch.int64
    assert batch["targets"]["alcohol"].dtype == torch.float32
    assert dm.num_features == 12  # alcohol is a target, so not a feature


def test_model_kwargs_describe_each_head_from_the_training_split(wine_csv: str) -> None:
    dm = MultiTaskDataModule(wine_csv, tasks=TASKS)
    dm.setup("fit")
    heads = dm.model_kwargs["heads"]
    alcohol = dm.dataset("train").targets["alcohol"].double()
    assert heads["cultivar"] == {"type": "classification", "num_classes": 3}
    assert heads["alcohol"]["mean"] == pytest.approx(float(alcohol.mean()))
    assert heads["alcohol"]["std"] == pytest.approx(float(alcohol.std()))
    assert dm.task_info["cultivar"]["class_names"] == ["class_0", "class_1", "class_2"]


def test_a_model_trains_on_its_batches(wine_csv: str) -> None:
    dm = MultiTaskDataModule(wine_csv, tasks=TASKS, loader={"batch_size": 32})
    dm.setup("fit")
    model = MultiTaskModel(task_weights={"alcohol": 0.5}, **dm.model_kwargs)
    model.log = lambda *args, **kwargs: None  # type: ignore[method-assign]  # no trainer attached
    loss = model._step(next(iter(dm.train_dataloader())), "train", 0)
    loss.backward()
    assert torch.isfinite(loss)


def test_column_defaults_to_task_name_and_missing_column_is_named(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("x,y,label\n1,2,a\n2,3,b\n3,4,a\n4,5,b\n")
    dm = MultiTaskDataModule(str(path), tasks={"label": {}, "y": {"type": "regression"}}, val_path=str(path))
    dm.setup("fit")
    assert dm.feature_names == ["x"]
    bad = MultiTaskDataModule(str(path), tasks={"z": {"type": "regression"}}, val_path=str(path))
    with pytest.raises(DataError, match="Column 'z' is not in"):
        bad.setup("fit")


@pytest.mark.parametrize(
    ("tasks", "key"),
    [
        ({"a": {"type": "ranking"}}, "tasks.a.type"),
        ({"a": {"colum": "a"}}, "tasks.a"),
        ({"a": "classification"}, "tasks.a"),
        ({}, "tasks"),
    ],
)
def test_bad_task_specs_name_the_key(tasks: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        MultiTaskDataModule("unused.csv", tasks=tasks)
    assert info.value.key == key


def test_task_weights_must_name_known_tasks() -> None:
    with pytest.raises(ValueError, match="does not have"):
        MultiTaskModel(3, {"a": {"type": "classification", "num_classes": 2}}, task_weights={"b": 1.0})


def test_predict_reads_rows_without_any_target(tmp_path: Path) -> None:
    """``predict_path`` here too: no task column in the file; each task's target is -1 or NaN."""
    from chute.datasets import sklearn_table, write_table

    table = sklearn_table("wine")
    write_table(table, tmp_path / "wine.csv")
    write_table(table.slice(0, 6).drop_columns(["cultivar", "alcohol"]), tmp_path / "new.csv")
    dm = MultiTaskDataModule(
        tmp_path / "wine.csv", predict_path=str(tmp_path / "new.csv"), loader={"batch_size": 8},
        tasks={"cultivar": {"type": "classification"}, "alcohol": {"type": "regression"}},
    )  # fmt: skip
    dm.setup("predict")
    batch = next(iter(dm.predict_dataloader()))
    assert tuple(batch["inputs"].shape) == (6, 12)
    assert batch["targets"]["cultivar"].tolist() == [-1] * 6
    assert torch.isnan(batch["targets"]["alcohol"]).all()
    assert dm.predict_rows is not None
    assert dm.predict_rows.tolist() == [1, 2, 3, 4, 5, 6]
