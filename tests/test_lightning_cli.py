"""chute from a LightningCLI project: ``--data chute.datamodules.<Kind>`` and its arguments, the
common settings (``**common``) included, as jsonargparse reads them from the signatures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

MAIN = """
from lightning.pytorch.cli import LightningCLI

if __name__ == "__main__":
    cli = LightningCLI(run=False, save_config_kwargs={"overwrite": True})
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    print("cli-data", type(cli.datamodule).__name__, cli.datamodule.loader_settings.batch_size, cli.datamodule.seed)
    print("cli-val-acc", float(cli.trainer.callback_metrics["val/acc"]))
"""


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "main.py").write_text(MAIN)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "main.py", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )


def test_help_lists_the_common_settings_of_a_datamodule(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "--data", "chute.datamodules.TabularDataModule", "--data.help",
                   "chute.datamodules.TabularDataModule")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    for argument in ("--data.path", "--data.target", "--data.batch_size", "--data.num_workers", "--data.seed",
                     "--data.on_error", "--data.imbalance"):  # fmt: skip
        assert argument in proc.stdout, argument


def test_a_table_trains_from_the_command_line(tmp_path: Path) -> None:
    proc = run_cli(
        tmp_path,
        "--data", "chute.datamodules.TabularDataModule", "--data.path", str(tmp_path / "bc.csv"),
        "--data.target", "diagnosis", "--data.prepare", "chute.datasets.SklearnTable",
        "--data.prepare.name", "breast_cancer", "--data.batch_size", "32", "--data.seed", "3",
        "--model", "chute.models.TabularModel", "--model.num_features", "30",
        "--trainer.max_epochs", "3", "--trainer.accelerator", "cpu", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_checkpointing", "false",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cli-data TabularDataModule 32 3" in proc.stdout
    accuracy = float(proc.stdout.split("cli-val-acc", 1)[1].split()[0])
    assert accuracy > 0.9
