"""Where the default experiment's data wait goes: `train.py` under Lightning's SimpleProfiler, per loader setting.

    python scripts/wait_breakdown.py                       # every variant below
    python scripts/wait_breakdown.py --variants default inline --seed 1

Each variant is one `python train.py trainer.profiler=simple ...` run (data already written). The
table gives StallMonitor's data-wait fraction and samples/s from the run's metrics.json, and the
profiler's mean milliseconds per training step for: the fetch from the loader
(``train_dataloader_next``), Lightning's copy to the device (``batch_to_device``), the DataModule's
batch hook (``on_after_batch_transfer``) and the step itself (``run_training_batch``).

Variants: ``default`` (conf/data/digits.yaml: one loader thread), ``threads2`` (two threads),
``inline`` (no thread: fetch, copy and hook in the training loop's thread), ``procs2`` (two worker
processes), ``switch05`` (the default with Python's GIL switch interval at 0.5 ms instead of
5 ms: if the wait drops, the loader thread was waiting for the GIL), and ``floor`` (the default's
loader threads read their first batch once and hand that same batch over at every step:
a loader that costs nothing, with the same hand-off between threads, so its data wait is what the
training loop and the hand-off take by themselves; its accuracy means nothing).

The ``loader-wait`` column is StallMonitor's ``loader_wait_fraction``: the part of the data wait
spent inside the loader's ``next()``; the rest of ``data-wait`` is the copy, the batch hook and
Lightning's own work between steps.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS: dict[str, list[str]] = {
    "default": [],
    "threads2": ["loader.num_workers=2"],
    "inline": ["loader.num_workers=0"],
    "procs2": ["loader.backend=torch", "loader.num_workers=2"],
    "switch05": [],
    "floor": [],
}
# Run before train.py in the variant's process (see the module docstring).
PRELUDES: dict[str, str] = {
    "switch05": "import sys; sys.setswitchinterval(0.0005)",
    "floor": (
        "from chute.loader import threaded\n"
        "read, first = threaded.ThreadedLoader._fetch, {}\n"
        "def once(self, batch):\n"
        "    if id(self) not in first:\n"
        "        first[id(self)] = read(self, batch)\n"
        "    return first[id(self)]\n"
        "threaded.ThreadedLoader._fetch = once"
    ),
}
ACTIONS = {
    "fetch": "train_dataloader_next",
    "copy": "batch_to_device",
    "hook": "on_after_batch_transfer",
    "step": "run_training_batch",
}


def run(name: str, seed: int, extra: list[str], report: bool = False) -> dict[str, float | str]:
    with tempfile.TemporaryDirectory() as run_dir:
        args = ["train.py", f"seed={seed}", "trainer.profiler=simple", f"hydra.run.dir={run_dir}"]
        args += [*VARIANTS[name], *extra]
        command = [sys.executable, *args]
        if (prelude := PRELUDES.get(name)) is not None:
            run_train = f"import runpy, sys\nsys.argv = {args!r}\nrunpy.run_path('train.py', run_name='__main__')"
            command = [sys.executable, "-c", f"{prelude}\n{run_train}"]
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            return {"variant": name, "error": proc.stderr[-2000:]}
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    if report:  # the profiler's whole table, slowest actions first as Lightning sorts them
        print("\n".join(line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("|")))
    row: dict[str, float | str] = {
        "variant": name,
        "val_acc": round(metrics["metrics"].get("val/acc", float("nan")), 4),
        "samples_per_s": metrics["train_samples_per_s"],
        "data_wait": metrics.get("data_wait_fraction", float("nan")),
        "loader_wait": metrics.get("loader_wait_fraction", float("nan")),
        "precision": metrics["precision"],
    }
    for key, action in ACTIONS.items():  # the profiler's table: | action | mean (s) | calls | total (s) | % |
        match = re.search(rf"\|\s*\S*{action}\S*\s*\|\s*([0-9.e-]+)\s*\|", proc.stdout + proc.stderr)
        row[f"{key}_ms"] = round(float(match.group(1)) * 1e3, 3) if match else float("nan")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", action="store_true", help="print the first variant's whole profiler table")
    parser.add_argument("overrides", nargs="*", help="more train.py overrides for every variant")
    args = parser.parse_args()
    columns = ["variant", "data-wait", "loader-wait", "samples/s", "fetch ms", "copy ms", "hook ms", "step ms"]
    columns += ["val/acc", "precision"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for name in args.variants:
        r = run(name, args.seed, args.overrides, report=args.report and name == args.variants[0])
        if "error" in r:
            print(f"| {name} | failed: {str(r['error'])[-300:]!r} |", flush=True)
            continue
        print(
            f"| {name} | {r['data_wait']} | {r['loader_wait']} | {r['samples_per_s']} | {r['fetch_ms']} | "
            f"{r['copy_ms']} | {r['hook_ms']} | {r['step_ms']} | {r['val_acc']} | {r['precision']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
