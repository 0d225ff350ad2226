"""The suite's own rules hold where it runs (issue 26)."""

from __future__ import annotations

import lightning as L
import pytest
from lightning.pytorch.accelerators import CUDAAccelerator


def test_a_cpu_trainer_on_a_gpu_machine_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Warnings are errors in this suite, and the GPU tests build CPU Trainers beside GPU ones on
    purpose; Lightning's "GPU available but not used" must not fail them on a GPU machine."""
    monkeypatch.setattr(CUDAAccelerator, "is_available", staticmethod(lambda: True))
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)


def test_every_example_in_the_package_docstrings_runs() -> None:
    """The ``Example:`` blocks are what readers copy first; run them all, so none goes stale (three
    had: a first batch size that depended on the order, a setting shown unresolved, a sequence too
    short for the model's kernels)."""
    import doctest
    import importlib
    import pkgutil

    import chute

    failed = {}
    for info in pkgutil.walk_packages(chute.__path__, "chute."):
        module = importlib.import_module(info.name)
        finder = doctest.DocTestFinder(exclude_empty=True)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
        for test in finder.find(module, module.__name__):
            result = runner.run(test, out=lambda _text: None)
            if result.failed:
                failed[test.name] = result.failed
    assert not failed, f"docstring examples that fail (run pytest --doctest-modules src/chute): {failed}"
