"""One way to write a DataModule: the common settings as one ``CommonArgs``, public hooks only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, default_collate
from typing_extensions import Unpack

from chute.datamodules import DATAMODULES, ChuteDataModule, CommonArgs, ImageFolderDataModule, StreamingDataModule
from chute.datamodules.base import ChuteDataModule as Base
from chute.datamodules.base import switch_arguments
from chute.errors import ConfigError
from chute.integrations import INTEGRATIONS, LitDataModule
from chute.loader import LoaderSettings

COMMON = set(CommonArgs.__annotations__)


ALL = {**DATAMODULES, **INTEGRATIONS}


@pytest.mark.parametrize("name", sorted(ALL))
def test_every_kind_takes_the_common_settings_it_supports(name: str) -> None:
    cls = ALL[name]
    taken = set(cls.init_parameters())
    assert COMMON - set(cls.unsupported) <= taken
    assert not (set(cls.unsupported) & taken)
    # a common setting, or an argument of the parent the kind passes the rest to (RayImages: cache)
    parent = next(c for c in cls.__mro__[1:] if "__init__" in vars(c))
    assert set(cls.unsupported) <= COMMON | set(getattr(parent, "init_parameters", dict)())


@pytest.mark.parametrize("name", sorted(ALL))
def test_no_kind_overrides_a_private_member_of_the_base(name: str) -> None:
    """Subclasses write public hooks; what begins with ``_`` is the base's own."""
    private = {n for n in vars(Base) if n.startswith("_") and not n.startswith("__")}
    for klass in ALL[name].__mro__:
        if klass is Base or not issubclass(klass, Base):
            continue
        assert not private & set(vars(klass)), f"{klass.__name__} overrides {private & set(vars(klass))}"


def test_a_kind_refuses_a_common_setting_it_cannot_honour_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"imbalance.*StreamingDataModule has no class targets"):
        StreamingDataModule(tmp_path, imbalance={"strategy": "weighted_sampler"})
    with pytest.raises(ConfigError, match=r"on_error.*LitDataModule has no bad-sample policy"):
        LitDataModule(tmp_path, on_error="skip")
    # the defaults, given or not, are accepted
    assert StreamingDataModule(tmp_path, imbalance={"strategy": "none"}, seed=3).seed == 3
    assert LitDataModule(tmp_path, on_error="raise", max_bad_fraction=0.01).seed == 0


class _Squares(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, n: int) -> None:
        self.x = torch.linspace(-1, 1, n).unsqueeze(1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], (self.x[i, 0] > 0).long()


class SquaresDataModule(ChuteDataModule):
    """A new kind written as docs/adding-a-datamodule.md says: public hooks, ``**common``."""

    def __init__(self, size: int = 64, *, val_size: int = 16, **common: Unpack[CommonArgs]) -> None:
        super().__init__(**common)
        if size < 1:
            raise ConfigError("size", size, "must be >= 1")
        self.size, self.val_size = size, val_size
        self._datasets: dict[str, _Squares] = {}
        self.save_plain_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        self._datasets = {"train": _Squares(self.size), "val": _Squares(self.val_size)}
        self._datasets["test"] = self._datasets["val"]
        self.check_imbalance()

    def split_dataloader(self, split: str, train: bool) -> Any:
        if not self._datasets:
            raise self.not_set_up_error()
        return self.build_dataloader(self._datasets[split], train=train, collate_fn=self.collate_or(default_collate))

    def class_labels(self) -> tuple[np.ndarray, int, tuple[str, ...]]:
        labels = (self._datasets["train"].x[:, 0] > 0).long().numpy()
        return labels, 2, ("negative", "positive")


class _Classifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(1, 2)
        self.seen: list[int] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.seen.append(len(y))
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_new_kind_from_the_recipe_trains_under_a_real_trainer(workers: int, tmp_path: Path) -> None:
    dm = SquaresDataModule(
        64, seed=1, loader={"batch_size": 8, "num_workers": workers}, imbalance={"strategy": "balanced_batches"}
    )
    assert (dm.hparams["size"], dm.hparams["seed"]) == (64, 1)
    assert dm.hparams["imbalance"]["strategy"] == "balanced_batches"
    model = _Classifier()
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    assert model.seen == [8] * 16
    assert dm.class_names == ("negative", "positive")
    with pytest.raises(ConfigError, match="size"):
        SquaresDataModule(0)


def test_a_null_seed_is_drawn_at_setup_kept_in_the_state_and_left_out_of_the_hparams() -> None:
    dm = SquaresDataModule(16, seed=None)
    assert "seed" not in dm.hparams  # drawn later, on rank 0 (tests/test_ddp.py: every rank gets it)
    dm.setup("fit")
    drawn = dm.seed
    assert isinstance(drawn, int)
    assert dm.state_dict()["seed"] == drawn
    again = SquaresDataModule(16, seed=None)
    again.load_state_dict(dm.state_dict())  # a resumed run continues with the run's seed
    again.setup("fit")
    assert again.seed == drawn
    with pytest.raises(ConfigError, match="seed"):
        SquaresDataModule(16, seed="7")  # type: ignore[arg-type]


def test_batch_size_and_num_workers_are_shortcuts_for_the_loader_settings() -> None:
    dm = SquaresDataModule(16, loader={"batch_size": 8, "drop_last": True}, batch_size=8, num_workers=0)
    assert (dm.loader_settings.batch_size, dm.loader_settings.num_workers) == (8, 0)
    assert dm.loader_settings.drop_last is True
    assert dm.hparams["loader"]["batch_size"] == 8
    with pytest.raises(ConfigError, match="batch_size"):
        SquaresDataModule(16, batch_size=0)


def test_the_shortcuts_set_after_construction_reach_the_next_loaders_and_the_hyperparameters() -> None:
    """``dm.num_workers = 2`` was an attribute of its own that nothing read: the loaders kept 0 workers."""
    dm = SquaresDataModule(16, batch_size=4)
    dm.setup("fit")
    dm.num_workers, dm.pin_memory = 2, False
    loader = dm.train_dataloader()
    assert (loader.num_workers, loader.pin_memory) == (2, False)
    assert dm.hparams["loader"]["num_workers"] == 2
    assert dm.hparams["loader"]["pin_memory"] is False
    assert sorted(float(x) for batch in loader for x in batch[0]) == sorted(float(x) for x in dm._datasets["train"].x)
    with pytest.raises(ConfigError, match=r"^num_workers=-1"):
        dm.num_workers = -1
    assert dm.num_workers == 2


@pytest.mark.parametrize(("key", "shortcut", "in_loader"), [("batch_size", 64, 16), ("num_workers", 0, 2)])
def test_a_shortcut_and_the_loader_key_that_disagree_are_refused(key: str, shortcut: int, in_loader: int) -> None:
    """The chute_* options set ``batch_size: 64`` and ``num_workers``: a user's
    ``+data.loader.batch_size=16`` was overruled by the shortcut, silently."""
    with pytest.raises(
        ConfigError, match=rf"loader\.{key}={in_loader}: disagrees with {key}={shortcut} .*set {key} alone"
    ):
        SquaresDataModule(16, loader={key: in_loader}, **{key: shortcut})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=rf"loader\.{key}={in_loader}: disagrees with {key}={shortcut}"):
        SquaresDataModule(16, loader=LoaderSettings(**{key: in_loader}), **{key: shortcut})  # type: ignore[arg-type]


def test_pin_memory_is_a_shortcut_too_as_lightning_hydra_templates_debug_configs_set_it() -> None:
    """The template's ``debug=*`` configs set ``data.pin_memory: False``: every chute_* option refused it."""
    assert SquaresDataModule(16, pin_memory=False).loader_settings.pin_memory is False
    assert SquaresDataModule(16, pin_memory=True).loader_settings.pin_memory is True
    assert SquaresDataModule(16, loader={"pin_memory": True}).loader_settings.pin_memory is True


@pytest.mark.parametrize("cls", [*DATAMODULES.values(), *INTEGRATIONS.values()], ids=lambda c: c.__name__)
def test_a_misspelt_argument_names_the_datamodule_and_the_closest_argument(cls: type) -> None:
    """``TabularDataModule('t.csv', categoricl=[...])`` was "ChuteDataModule.__init__() got an
    unexpected keyword argument", naming neither the class nor what was meant."""
    from chute.errors import UnknownArgumentError

    with pytest.raises(UnknownArgumentError, match=rf"^num_worker=2: is not an argument of {cls.__name__}: did you "
                                                   "mean num_workers\\?") as err:  # fmt: skip
        cls("somewhere", num_worker=2)
    assert isinstance(err.value, TypeError)
    assert isinstance(err.value, ConfigError)


def test_a_subclass_that_takes_keywords_of_its_own_through_kwargs_still_works() -> None:
    """The misspelt-argument check lists a DataModule's arguments; a user's subclass that pops its
    own from ``**kwargs`` has arguments no signature shows, and is left to Python's own check."""

    class Mine(SquaresDataModule):
        def __init__(self, n: int, **kwargs: Any) -> None:
            self.scale = kwargs.pop("scale", 1)
            super().__init__(n, **kwargs)

    assert Mine(16, scale=3, batch_size=4).scale == 3
    with pytest.raises(TypeError):
        Mine(16, batch_sise=4)


@pytest.mark.parametrize("cls", [*DATAMODULES.values(), *INTEGRATIONS.values()], ids=lambda c: c.__name__)
def test_a_switch_given_as_a_string_is_refused_naming_it(cls: type) -> None:
    """``channels_last="false"`` (or ``drop_last: no`` in a YAML file no schema converts) was taken as
    true: a non-empty string is truthy. Every argument typed ``bool`` refuses it before anything is read."""
    switches = switch_arguments(cls.init_parameters())  # type: ignore[attr-defined]
    assert "pin_memory" in switches  # (a common one: every kind has one)
    for key in switches:
        with pytest.raises(ConfigError, match=rf"^{key}='false': must be true or false"):
            cls("somewhere", **{key: "false"})


@pytest.mark.parametrize("key", ["drop_last", "shuffle", "seed_workers", "pin_memory", "persistent_workers"])
@pytest.mark.parametrize("value", ["no", "false", 1])
def test_the_loader_settings_refuse_a_switch_that_is_not_a_boolean(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}={value!r}: must be true or false"):
        LoaderSettings(**{key: value})
    with pytest.raises(ConfigError, match=rf"^{key}={value!r}: must be true or false"):
        ImageFolderDataModule("somewhere", loader={key: value})
    assert getattr(LoaderSettings(**{key: False}), key) is False
