"""How fast the engine trains: against the textbook loop, PyTorch's own recipe for K models (torch.func), the
device's matmul peak and its memory bandwidth. Prints one JSON.

Paths, each on the reference BatchNorm model at batch 64 with plain SGD:
  dataloader  the textbook loop fed by a DataLoader with per-sample ToTensor (the reference recipe), one model;
  resident    the same loop over tensors already on the device (`resident_batches`), one model;
  stacked     K models in one pass of the engine (`engine.run_epoch`, as the notebook trains them), K in 1, 10, 32,
              64, with one shared batch order ("shared": runs of one seed) or one order per model ("own": K seeds);
  torch.func  PyTorch's recipe for K models at once: parameters and buffers stacked by `stack_module_state`,
              vmap(grad(functional_call)) (BatchNorm's running statistics tracked), SGD as one foreach update;
  first layer the engine's step with only its batch gather and the first Linear's two matrix multiplies (forward
              and in-place update): what the step cannot go below on this device with these kernels;
  compiled    (with --compile) the engine with the part of its step between those two multiplies compiled by
              torch.compile from an empty cache: `compile_seconds` is what the first step paid.
FLOPs are counted from the layer shapes: forward and weight gradients of every Linear, input gradients of all
but the first. The peak is the fastest 2048^3 matmul measured in the run, taken again before every path (the
machine's speed drifts; the fastest of all is the peak), and the bandwidth is a STREAM-like copy of 256 MB.

Each engine row's `roofline_fraction` is the share of the peak that the bytes a step must move allow: the first
Linear's weight read by the forward pass, read and written by the update, and each seed's batch read once, at the
measured bandwidth. `fraction_of_peak` is what the path reached.

    FASHION_MNIST_ROOT=../shared/datasets .venv/bin/python -m benchmarks.epoch_speed [--repeats 5] [--out F]
    ... --notebook-seconds S   also report the notebook's efficiency: model-epochs x floor / wall time
"""
import argparse
import copy
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, stack_module_state, vmap

from bnstudy.config import pick_device
from bnstudy.data import epoch_permutation, load_fashion_mnist, resident_batches, to_device_tensors
from bnstudy.engine import Trainer, run_epoch
from bnstudy.models import Arch, Run, make_model, model_of
from bnstudy.notebook import REPO, data_root, load_definitions

WIDTHS = (784, *Arch().hidden, 10)   # the tutorial's MLP
BATCH, LR = 64, 0.001


def flops_per_sample(widths=WIDTHS):
    """Forward (2 m n) and weight gradient (2 m n) of every Linear, input gradient (2 m n) of all but the first."""
    layers = list(zip(widths, widths[1:]))
    return sum(4 * m * n for m, n in layers) + sum(2 * m * n for m, n in layers[1:])


def step_bytes(k, seeds, widths=WIDTHS, itemsize=4):
    """What a step must move at least: the first Linear's weight three times (read by the forward, read and written
    by the update) and each seed's batch once."""
    return itemsize * (3 * k * widths[0] * widths[1] + seeds * BATCH * widths[0])


class FuncStack:
    """K nn.Modules trained as PyTorch's torch.func tutorial stacks them: the same step as `Trainer.step`."""

    def __init__(self, runs, device, dtype=torch.float32):
        models = [model_of(run)[0].to(device, dtype) for run in runs]
        self.params, self.buffers = stack_module_state(models)
        base = copy.deepcopy(models[0]).to("meta")
        self.lr = torch.tensor([r.lr for r in runs], device=device, dtype=dtype)

        def loss(params, buffers, x, y):
            return F.cross_entropy(functional_call(base, (params, buffers), (x,)), y)
        self.grads = {True: vmap(grad(loss), in_dims=(0, 0, None, None)), False: vmap(grad(loss), in_dims=(0, 0, 0, 0))}

    def step(self, xs, ys):
        """xs [S, B, 784], ys [S, B]: S = 1 (one shared batch) or S = K (each model its own)."""
        shared = xs.shape[0] == 1
        grads = self.grads[shared](self.params, self.buffers, xs[0] if shared else xs, ys[0] if shared else ys)
        names = list(self.params)
        with torch.no_grad():   # SGD: p -= lr_k * g, each model at its own lr, one foreach call
            torch._foreach_sub_([self.params[n] for n in names],
                                [grads[n] * self.lr.view(-1, *[1] * (grads[n].dim() - 1)) for n in names])


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
    parser.add_argument("--func-ks", default="32,64", help="stack sizes of the torch.func rows")
    parser.add_argument("--repeats", type=int, default=5, help="time each path this often; keep the fastest")
    parser.add_argument("--steps", type=int, default=150, help="steps timed per stacked run (an epoch is 938)")
    parser.add_argument("--out", help="also write the JSON here (the docs read results/epoch_speed.json)")
    parser.add_argument("--compile", action="store_true", help="also time the step with torch.compile (slow to build)")
    parser.add_argument("--notebook-seconds", type=float, help="the notebook's wall time, for its efficiency")
    parser.add_argument("--previous-notebook-seconds", type=float,
                        help="the previous engine's notebook, timed in the same session, for comparison")
    args = parser.parse_args()
    nb = load_definitions()
    device = pick_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    train_set = load_fashion_mnist(data_root(), train=True)
    X, y = to_device_tensors(train_set, device)
    n = len(X)
    steps_per_epoch = math.ceil(n / BATCH)
    epoch_flops = flops_per_sample() * n

    a = torch.randn(2048, 2048, device=device)
    peaks = []

    def measure_peak():
        peaks.append(2 * 2048 ** 3 / fastest(lambda: (lambda: a @ a), 4, sync)[0] / 1e9)

    source, target = torch.ones(64 * 2 ** 20, device=device), torch.zeros(64 * 2 ** 20, device=device)  # 256 MB
    copy_seconds = fastest(lambda: (lambda: target.copy_(source)), 6, sync)[0]   # pages touched: no faults timed
    bandwidth = 2 * source.numel() * 4 / copy_seconds / 1e9   # bytes read and written, GB/s
    del source, target

    entries = []

    def entry(path, k, order, seconds, spread, seeds=None):
        """One timed path: seconds per model-epoch (60,000 images), GFLOP/s; shares of the peak filled in below."""
        per_model_epoch = seconds / k
        row = {"path": path, "k": k, "order": order, "seconds_per_model_epoch": round(per_model_epoch, 4),
               "spread_seconds_per_model_epoch": round(spread / k, 4),
               "gflops": round(epoch_flops / per_model_epoch / 1e9, 1)}
        if seeds is not None:
            row["step_bytes"] = step_bytes(k, seeds)
        entries.append(row)

    def textbook(batches_of):
        def run():
            model, g = make_model(nb.FashionNetworkBatchNorm, 0, device if batches_of is not None else "cpu")
            source = batches_of(g) if batches_of is not None else nb.dataloader_batches(train_set, BATCH, g)
            return lambda: nb.train_epoch(model, source, LR)
        return run

    def orders_of(seeds):
        return torch.stack([epoch_permutation(n, torch.Generator().manual_seed(s)) for s in seeds]).to(device)

    def engine(k, order):
        seeds = [0] * k if order == "shared" else list(range(k))

        def run():
            """The engine's own epoch loop (run_epoch, as train_runs calls it) over `steps` batches."""
            trainer = Trainer([Run(s, LR * (1 + i), arch=Arch(norm="batchnorm")) for i, s in enumerate(seeds)],
                              device)
            orders = orders_of(trainer.models.seeds)
            run_epoch(trainer, (X, y), orders[:, :5 * BATCH], BATCH)   # warm-up: allocator and kernels
            timed = orders[:, 5 * BATCH:(5 + args.steps) * BATCH]
            return lambda: run_epoch(trainer, (X, y), timed, BATCH)
        return run, len(set(seeds))

    def first_layer_only(k, order):
        seeds = [0] * k if order == "shared" else list(range(k))

        def run():
            trainer = Trainer([Run(s, LR * (1 + i), arch=Arch(norm="batchnorm")) for i, s in enumerate(seeds)],
                              device)
            orders = orders_of(trainer.models.seeds)
            d_h0 = torch.zeros(k, WIDTHS[1], BATCH, device=device)

            def go(start, stop):
                with torch.no_grad():
                    for j in range(start, stop):
                        idx = orders[:, j * BATCH:(j + 1) * BATCH].reshape(-1)
                        xs = X.index_select(0, idx).view(len(orders), BATCH, -1)
                        y.index_select(0, idx)
                        inputs = [trainer.group_input(g, xs) for g in trainer.groups]
                        trainer.first_layer(inputs)
                        trainer.first_layer_step(inputs, d_h0)
            go(0, 3)
            return lambda: go(3, 3 + args.steps)
        return run, len(set(seeds))

    compile_seconds = {}

    def compiled(k, order):
        seeds = [0] * k if order == "shared" else list(range(k))

        def run():
            trainer = Trainer([Run(s, LR * (1 + i), arch=Arch(norm="batchnorm")) for i, s in enumerate(seeds)],
                              device)
            trainer.after_first_layer = torch.compile(trainer.after_first_layer, dynamic=False)
            orders = orders_of(trainer.models.seeds)
            start = time.perf_counter()
            run_epoch(trainer, (X, y), orders[:, :BATCH], BATCH)   # the first step compiles
            compile_seconds.setdefault((k, order), time.perf_counter() - start)
            run_epoch(trainer, (X, y), orders[:, BATCH:5 * BATCH], BATCH)
            timed = orders[:, 5 * BATCH:(5 + args.steps) * BATCH]
            return lambda: run_epoch(trainer, (X, y), timed, BATCH)
        return run, len(set(seeds))

    def func(k, order):
        seeds = [0] * k if order == "shared" else list(range(k))

        def run():
            stack = FuncStack([Run(s, LR * (1 + i), arch=Arch(norm="batchnorm")) for i, s in enumerate(seeds)], device)
            orders = orders_of(list(dict.fromkeys(seeds)))

            def go(start, stop):
                for j in range(start, stop):
                    idx = orders[:, j * BATCH:(j + 1) * BATCH].reshape(-1)
                    stack.step(X.index_select(0, idx).view(len(orders), BATCH, -1),
                               y.index_select(0, idx).view(len(orders), BATCH))
            go(0, 3)   # warm-up
            return lambda: go(3, 3 + args.steps)
        return run, len(set(seeds))

    measure_peak()
    best, worst = fastest(textbook(None), max(2, args.repeats // 2), lambda: None)
    entry("dataloader", 1, "own", best, worst - best)
    best, worst = fastest(textbook(lambda g: resident_batches((X, y), BATCH, g)), args.repeats, sync)
    entry("resident", 1, "own", best, worst - best)
    scale = steps_per_epoch / args.steps  # timed on `steps` steps, reported per 938-step epoch
    plan = [("stacked", engine, int(k)) for k in args.ks.split(",")]
    plan += [("torch.func", func, int(k)) for k in args.func_ks.split(",") if k]
    plan += [("first layer", first_layer_only, 64)]
    if args.compile:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor_")   # empty: compile time counts
        plan += [("compiled", compiled, 64)]
    for path, make, k in plan:
        for order in ("shared", "own"):
            if k == 1 and order == "own":
                continue
            measure_peak()
            run, seeds = make(k, order)
            best, worst = fastest(run, args.repeats, sync)
            entry(path, k, order, best * scale, (worst - best) * scale, seeds)
            if (k, order) in compile_seconds and path == "compiled":
                entries[-1]["compile_seconds"] = round(compile_seconds.pop((k, order)), 1)
    measure_peak()
    peak = max(peaks)
    for e in entries:
        e["fraction_of_peak"] = round(e["gflops"] / peak, 3)
        e["ratio_vs_dataloader"] = round(entries[0]["seconds_per_model_epoch"] / e["seconds_per_model_epoch"], 1)
        if "step_bytes" in e:   # the share of the peak that a step's bytes at the measured bandwidth allow
            flops_seconds = flops_per_sample() * BATCH * e["k"] / (peak * 1e9)
            e["roofline_fraction"] = round(min(1.0, flops_seconds / (e.pop("step_bytes") / (bandwidth * 1e9))), 3)
    report = {
        "model": "FashionNetworkBatchNorm (784-64-32-10), batch 64, plain SGD",
        "flops_per_model_epoch": epoch_flops, "peak_matmul_gflops": round(peak, 1),
        "peak_matmul_gflops_each_time": [round(p, 1) for p in peaks],
        "copy_bandwidth_gb_per_s": round(bandwidth, 1),
        "floor_seconds_per_model_epoch": round(epoch_flops / peak / 1e9, 4),
        "repeats": args.repeats, "timed_steps_per_stacked_run": args.steps, "entries": entries,
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"{device.type}: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"),
        "torch": torch.__version__,
    }
    if args.notebook_seconds:
        summary = json.loads((REPO / "results" / "study_summary.json").read_text())["summary"]
        model_epochs = summary["model_epochs_trained"]
        floor = model_epochs * report["floor_seconds_per_model_epoch"]
        report["notebook"] = {"wall_seconds": args.notebook_seconds, "model_epochs_trained": model_epochs,
                              "efficiency": round(floor / args.notebook_seconds, 3)}
        if args.previous_notebook_seconds:
            report["notebook"]["previous_engine_wall_seconds"] = args.previous_notebook_seconds
            report["notebook"]["previous_engine_efficiency"] = round(floor / args.previous_notebook_seconds, 3)
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
