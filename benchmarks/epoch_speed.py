"""How fast the engine trains, against the textbook loop and against the CPU's own matmul peak; prints one JSON.

Paths, each on the reference BatchNorm model at batch 64 with plain SGD:
  dataloader  the textbook loop fed by a DataLoader with per-sample ToTensor (the reference recipe), one model;
  resident    the same loop over tensors already on the device (`resident_batches`), one model;
  stacked     K models in one pass of the engine (`run_epoch`, as the notebook trains them), K in 1, 10, 32, 64,
              with one shared batch order ("shared": runs of one seed) or one order per model ("own": K seeds).
FLOPs are counted from the layer shapes: forward and weight gradients of every Linear, input gradients of all
but the first. The peak is the fastest 2048^3 fp32 matmul measured in the same run.

    FASHION_MNIST_ROOT=../shared/datasets .venv/bin/python benchmarks/epoch_speed.py [--repeats 5] [--out F]
    ... --notebook-seconds S   also report the notebook's efficiency: model-epochs x floor / wall time
"""
import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))            # the package bnstudy/
sys.path.insert(0, str(REPO / "tests"))  # the notebook's own definitions: the textbook loop and the tutorial's models
from study_notebook import data_root, load_definitions  # noqa: E402
from bnstudy.config import pick_device  # noqa: E402
from bnstudy.data import epoch_permutation, load_fashion_mnist, resident_batches, to_device_tensors  # noqa: E402
from bnstudy.engine import Run, Stack, run_epoch  # noqa: E402
from bnstudy.models import Arch, make_model  # noqa: E402

WIDTHS = (784, *Arch().hidden, 10)   # the tutorial's MLP


def flops_per_sample(widths=WIDTHS):
    """Forward (2 m n) and weight gradient (2 m n) of every Linear, input gradient (2 m n) of all but the first."""
    layers = list(zip(widths, widths[1:]))
    return sum(4 * m * n for m, n in layers) + sum(2 * m * n for m, n in layers[1:])


def fastest(run, repeats, synchronize):
    """Fastest and slowest wall-clock seconds of `repeats` calls of run() (each prepares its own fresh state)."""
    times = []
    for _ in range(repeats):
        go = run()
        synchronize()
        start = time.perf_counter()
        go()
        synchronize()
        times.append(time.perf_counter() - start)
    return min(times), max(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="as the notebook's DEVICE setting")
    parser.add_argument("--ks", default="1,10,32,64", help="stack sizes K to time")
    parser.add_argument("--repeats", type=int, default=5, help="time each path this often; keep the fastest")
    parser.add_argument("--steps", type=int, default=150, help="steps timed per stacked run (an epoch is 938)")
    parser.add_argument("--out", help="also write the JSON here (the README's table reads results/epoch_speed.json)")
    parser.add_argument("--notebook-seconds", type=float, help="the notebook's wall time, for its efficiency")
    args = parser.parse_args()
    nb = load_definitions()
    device = pick_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    train_set = load_fashion_mnist(data_root(), train=True)
    X, y = to_device_tensors(train_set, device)
    n, batch, lr = len(X), 64, 0.001
    steps_per_epoch = math.ceil(n / batch)
    epoch_flops = flops_per_sample() * n

    a = torch.randn(2048, 2048, device=device)
    peak_seconds = fastest(lambda: (lambda: a @ a), args.repeats * 2, sync)[0]
    peak = 2 * 2048 ** 3 / peak_seconds / 1e9

    def entry(path, k, order, seconds, spread):
        """One timed path: seconds per model-epoch (60,000 images), GFLOP/s, share of peak, speed-up."""
        per_model_epoch = seconds / k
        return {"path": path, "k": k, "order": order, "seconds_per_model_epoch": round(per_model_epoch, 4),
                "spread_seconds_per_model_epoch": round(spread / k, 4),
                "gflops": round(epoch_flops / per_model_epoch / 1e9, 1),
                "fraction_of_peak": round(epoch_flops / per_model_epoch / 1e9 / peak, 3)}

    def textbook(batches_of):
        def run():
            model, g = make_model(nb.FashionNetworkBatchNorm, 0, device if batches_of is not None else "cpu")
            source = batches_of(g) if batches_of is not None else nb.dataloader_batches(train_set, batch, g)
            return lambda: nb.train_epoch(model, source, lr)
        return run

    entries = []
    best, worst = fastest(textbook(None), max(2, args.repeats // 2), lambda: None)
    entries.append(entry("dataloader", 1, "own", best, worst - best))
    best, worst = fastest(textbook(lambda g: resident_batches((X, y), batch, g)), args.repeats, sync)
    entries.append(entry("resident", 1, "own", best, worst - best))
    for k in [int(v) for v in args.ks.split(",")]:
        for order in ("shared", "own"):
            if k == 1 and order == "own":
                continue
            seeds = [0] * k if order == "shared" else list(range(k))

            def run(seeds=seeds):
                """The engine's own epoch loop (run_epoch, as train_runs calls it) over `steps` batches."""
                stack = Stack(Arch(norm="batchnorm"), [Run(s, lr * (1 + i)) for i, s in enumerate(seeds)], device)
                orders = torch.stack([epoch_permutation(n, torch.Generator().manual_seed(s))
                                      for s in stack.seeds]).to(device)
                run_epoch(stack, (X, y), orders[:, :5 * batch], batch)   # warm-up: allocator and kernels
                timed = orders[:, 5 * batch:(5 + args.steps) * batch]
                return lambda: run_epoch(stack, (X, y), timed, batch)

            best, worst = fastest(run, args.repeats, sync)
            scale = steps_per_epoch / args.steps  # timed on `steps` steps, reported per 938-step epoch
            entries.append(entry("stacked", k, order, best * scale, (worst - best) * scale))
    baseline = entries[0]["seconds_per_model_epoch"]
    for e in entries:
        e["ratio_vs_dataloader"] = round(baseline / e["seconds_per_model_epoch"], 1)
    report = {
        "model": "FashionNetworkBatchNorm (784-64-32-10), batch 64, plain SGD",
        "flops_per_model_epoch": epoch_flops, "peak_matmul_gflops": round(peak, 1),
        "floor_seconds_per_model_epoch": round(epoch_flops / peak / 1e9, 4),
        "repeats": args.repeats, "timed_steps_per_stacked_run": args.steps, "entries": entries,
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"{device.type}: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"),
        "torch": torch.__version__,
    }
    if args.notebook_seconds:
        summary = json.loads((REPO / "results" / "study_summary.json").read_text())["summary"]
        model_epochs = summary["model_epochs_trained"]
        report["notebook"] = {"wall_seconds": args.notebook_seconds, "model_epochs_trained": model_epochs,
                              "efficiency": round(model_epochs * report["floor_seconds_per_model_epoch"]
                                                  / args.notebook_seconds, 3)}
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
