"""Training-step throughput of a chute backbone under each precision, side by side in one process.

    python scripts/bench_precision.py                      # small_cnn at 12 px, as the default run
    python scripts/bench_precision.py --backbone resnet18 --image-size 32 --channels 3

CPU: 32-true vs bf16-mixed (autocast to bfloat16). CUDA (when present): also 16-mixed.
Writes JSON, CSV and a PNG bar chart to outputs/benchmarks/.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from benchlib import write_results
from chute.models import create_backbone


def step_rate(backbone: str, device: str, precision: str, args: argparse.Namespace) -> float:
    """Samples/s of forward + backward + AdamW step, median of ``args.repeats`` timed blocks."""
    torch.manual_seed(0)
    net = create_backbone(backbone, args.channels, 10).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters())
    x = torch.randn(args.batch_size, args.channels, args.image_size, args.image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler(device, enabled=precision == "16-mixed")

    def block(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = torch.nn.functional.cross_entropy(net(x).float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    block(args.warmup)
    times = sorted(block(args.steps) for _ in range(args.repeats))
    return args.batch_size * args.steps / times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--image-size", type=int, default=12)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks"))
    args = parser.parse_args()

    cases = [("cpu", "32-true"), ("cpu", "bf16-mixed")]
    if torch.cuda.is_available():
        cases += [("cuda", "32-true"), ("cuda", "16-mixed"), ("cuda", "bf16-mixed")]
    rows: list[dict[str, Any]] = []
    for device, precision in cases:
        rate = step_rate(args.backbone, device, precision, args)
        rows.append({"device": device, "precision": precision, "samples_per_s": round(rate, 1)})
    base = {r["device"]: r["samples_per_s"] for r in rows if r["precision"] == "32-true"}
    for r in rows:
        r["vs_32_true"] = round(r["samples_per_s"] / base[r["device"]], 3)
        rate, ratio = r["samples_per_s"], r["vs_32_true"]
        print(f"{r['device']:>5} {r['precision']:>11}: {rate:>9,.0f} samples/s  ({ratio:.2f}x fp32)")

    for r in rows:
        r["label"] = f"{r['device']}\n{r['precision']}"
    stem = args.out / f"precision_{args.backbone}_{args.image_size}px"
    title = f"{args.backbone}, {args.image_size}px, batch {args.batch_size}"
    write_results(stem, vars(args), rows, "samples_per_s", title)


if __name__ == "__main__":
    main()
