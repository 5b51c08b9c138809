"""Time one training epoch three ways, side by side, with the notebook's own definitions; print JSON.

(a) the reference loop: DataLoader with per-sample ToTensor, batch 64, one model;
(b) the same loop over resident tensors (`resident_batches`), one model;
(c) K models in one stacked pass (`stacked_sgd_epoch`);
and, for scale, the compute floor: one forward + backward pass over the training set at a large batch.

    FASHION_MNIST_ROOT=../shared/datasets .venv/bin/python benchmarks/epoch_speed.py [--k 10] [--device auto] [--out F]
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
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from notebook import data_root, load_definitions  # noqa: E402


def timed(make_run, device, repeats):
    """Fastest wall-clock seconds of `repeats` runs; make_run() prepares fresh state and returns the run to time."""
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best = math.inf
    for _ in range(repeats):
        run = make_run()
        synchronize()
        start = time.perf_counter()
        run()
        synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=10, help="models in the stacked pass (c)")
    parser.add_argument("--device", default="auto", help="as the notebook's DEVICE setting")
    parser.add_argument("--model", default="FashionNetworkBatchNorm", help="FashionNetwork or FashionNetworkBatchNorm")
    parser.add_argument("--repeats", type=int, default=3, help="time each way this often and keep the fastest")
    parser.add_argument("--out", help="also write the JSON to this file (the README's speed table: results/)")
    args = parser.parse_args()
    nb = load_definitions()
    device = nb.pick_device(args.device)
    train_set = nb.load_fashion_mnist(data_root(), train=True)
    train = nb.to_device_tensors(train_set, device)
    model_class, batch, lr = getattr(nb, args.model), 64, 0.001

    cpu = torch.device("cpu")
    model, g = nb.make_model(model_class, 0, device)
    nb.train_epoch(model, nb.resident_batches(train, batch, g), lr)  # warm-up: allocator, kernels, caches

    def reference():
        model, g = nb.make_model(model_class, 0, "cpu")  # the DataLoader yields CPU tensors
        return lambda: nb.train_epoch(model, nb.dataloader_batches(train_set, batch, g), lr)

    def resident():
        model, g = nb.make_model(model_class, 0, device)
        return lambda: nb.train_epoch(model, nb.resident_batches(train, batch, g), lr)

    def stacked():
        pairs = [nb.make_model(model_class, seed, device) for seed in range(args.k)]
        params, buffers = nb.stack_models([m for m, _ in pairs])
        order = torch.stack([nb.epoch_permutation(len(train[0]), g) for _, g in pairs]).to(device)
        lrs = torch.full((args.k,), lr, device=device)
        return lambda: nb.stacked_sgd_epoch(pairs[0][0].layers, params, buffers, train, order, batch, lrs)

    def compute_floor():
        model, _ = nb.make_model(model_class, 0, device)
        def one_pass():  # forward + backward over all 60,000 images at batch 4096: the arithmetic, little else
            for xb, yb in zip(train[0].split(4096), train[1].split(4096)):
                F.cross_entropy(model(xb), yb).backward()
        return one_pass

    a = timed(reference, cpu, args.repeats)
    b = timed(resident, device, args.repeats)
    c = timed(stacked, device, args.repeats)
    floor = timed(compute_floor, device, args.repeats)

    report = json.dumps({
        "model": args.model, "batch_size": batch, "k": args.k, "repeats (fastest kept)": args.repeats,
        "seconds_per_epoch": {"a_dataloader": round(a, 3), "b_resident": round(b, 3),
                              "c_stacked_k_models": round(c, 3), "compute_floor_batch_4096": round(floor, 3)},
        "model_epochs_per_second": {"a_dataloader": round(1 / a, 2), "b_resident": round(1 / b, 2),
                                    "c_stacked_k_models": round(args.k / c, 2),
                                    "compute_floor_batch_4096": round(1 / floor, 2)},
        "ratio_b_over_a": round(a / b, 1), "ratio_c_over_a": round(a * args.k / c, 1),
        "ratio_floor_over_a": round(a / floor, 1),
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"{device.type}: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"),
        "torch": torch.__version__,
    }, indent=1)
    if args.out:
        Path(args.out).write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
