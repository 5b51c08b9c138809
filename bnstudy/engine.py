"""The training loop: every run of a pass trained at once, on batches cut from data resident on the device.

A pass is a list of `Run`s (each with its architecture; widths shared). Runs with the same seed see the same batches
in the same order (the study's paired design), so the gather of a step is one per seed and, inside a block of one
architecture, the first Linear of a seed's runs is one matrix multiply. The step is `StackedMLP`'s forward and
backward by hand, then the optimiser; nothing inside the step loop reads a value back to the host.
"""
import math
from dataclasses import dataclass

import numpy as np
import torch

from .data import TRAIN_IMAGES, epoch_permutation
from .norms import MOMENTUM, Mode, norm_of
from .optim import make_optimizer, per_model
from .progress import bar
from .stack import StackedMLP


@dataclass
class Group:
    """Consecutive seeds of one architecture with the same number of runs: their first Linear is [U, G * F1, 784],
    one batched matmul over the U batches of those seeds."""
    block: object
    rows: slice       # stack rows
    U: int
    select: object    # the seeds' places in the pass's list of seeds (None: all of them, in order)


class Trainer:
    """A StackedMLP and its optimiser, with the pass's seed groups (`Group`): the step's first Linear is one batched
    matmul per group, usually one per architecture."""

    def __init__(self, runs, device, dtype=torch.float32, optimizer="sgd", input_stats=None):
        self.models = StackedMLP(runs, device, dtype, input_stats)
        m, self.groups = self.models, []
        for blk in m.blocks:
            mine = m.runs[blk.rows]
            seeds = list(dict.fromkeys(r.seed for r in mine))
            counts = [sum(r.seed == s for r in mine) for s in seeds]
            start, i = blk.start, 0
            while i < len(seeds):   # seeds of a block stand in the stack one after another, their runs together
                j = i
                while j < len(seeds) and counts[j] == counts[i]:
                    j += 1
                positions = [m.seeds.index(s) for s in seeds[i:j]]
                select = None if positions == list(range(len(m.seeds))) else torch.tensor(positions, device=m.device)
                stop = start + counts[i] * (j - i)
                self.groups.append(Group(blk, slice(start, stop), j - i, select))
                start, i = stop, j
        self.first_gradient = None   # the first Linear's gradient buffer, for optimisers that need it
        self._flatten()
        W0, b0 = m.W[0], m.b[0]
        self.optimizer = make_optimizer(optimizer, m.runs, [W0, b0, self.flat],
                                        [lambda v: per_model(v, W0), lambda v: per_model(v, b0),
                                         lambda v: v.index_select(0, self.model_of_element)], m.device, dtype)

    def _flatten(self):
        """The stack's parameters after the first Linear in one buffer, their gradients in another of the same
        layout, and which model each element belongs to (for per-model optimiser settings)."""
        m = self.models
        self.flat, shapes = m.flatten_after_first_layer()
        self.flat_grad = torch.zeros_like(self.flat)
        self.grads, start = [], 0
        for shape in shapes:
            n = shape.numel()
            self.grads.append(self.flat_grad[start:start + n].view(shape))
            start += n
        self.model_of_element = torch.cat([torch.arange(m.K, device=m.device).repeat_interleave(shape[1:].numel())
                                           for shape in shapes])
        self.bias_grad = torch.zeros_like(m.b[0])

    def group_input(self, group, xs):
        x = xs if group.select is None else xs.index_select(0, group.select)
        return self.models.block_input(group.block, x)

    def first_layer(self, inputs):
        """h0 [K, F1, B] from each group's batches inputs[g] [U_g, B, 784]."""
        m = self.models
        W, b = m.W[0], m.b[0]
        B = inputs[0].shape[1]
        if len(self.groups) == 1:
            U = self.groups[0].U
            return torch.baddbmm(b.view(U, -1, 1), W.view(U, -1, W.shape[-1]), inputs[0].transpose(1, 2)).view(
                m.K, -1, B)
        h0 = torch.empty(m.K, W.shape[1], B, device=m.device, dtype=m.dtype)
        for group, x in zip(self.groups, inputs):
            rows, U = group.rows, group.U
            torch.baddbmm(b[rows].reshape(U, -1, 1), W[rows].reshape(U, -1, W.shape[-1]), x.transpose(1, 2),
                          out=h0[rows].view(U, -1, B))
        return h0

    def first_layer_step(self, inputs, d_h0):
        """The first Linear's weight. Plain SGD: W -= (lr·dH) Xᵀ (X [B, 784] per seed), one in-place batched GEMM per group, its gradient
        never materialised. Otherwise the gradient goes into one preallocated buffer, which is returned."""
        m = self.models
        W, B = m.W[0], d_h0.shape[2]
        if self.optimizer.lr_in_gradients:
            for group, x in zip(self.groups, inputs):
                U = group.U
                W[group.rows].view(U, -1, W.shape[-1]).baddbmm_(d_h0[group.rows].view(U, -1, B), x, alpha=-1)
            return None
        if self.first_gradient is None:
            self.first_gradient = torch.empty_like(W)
        for group, x in zip(self.groups, inputs):
            U = group.U
            torch.bmm(d_h0[group.rows].view(U, -1, B), x,
                      out=self.first_gradient[group.rows].view(U, -1, W.shape[-1]))
        return self.first_gradient

    def after_first_layer(self, h0, targets, scale, step):
        """Everything between the first Linear's forward and its update: the later layers forward, the loss, and the
        backward pass down to d_h0 [K, F1, B] (gradients into the buffer). Returns d_h0, losses and hits."""
        logits, saved = self.models.train_forward(h0, Mode(True, step, MOMENTUM))
        losses, hits, d_logits = cross_entropy_step(logits, targets, scale)
        return self.models.backward(d_logits, saved, self.grads), losses, hits

    def step(self, xs, ys, lr_factor=1.0):
        """One step of all K models on each seed's batch: xs [S, B, 784], ys [S, B] (S seeds, in `models.seeds`
        order). Returns each model's loss and number of correct answers on its batch, left on the device."""
        m = self.models
        with torch.no_grad():
            inputs = [self.group_input(group, xs) for group in self.groups]
            targets = ys.index_select(0, m.seed_of_row)                                  # [K, B]
            lr = m.lr if lr_factor == 1.0 else m.lr * lr_factor                          # [K]; no op without a schedule
            scale = lr / xs.shape[1] if self.optimizer.lr_in_gradients else 1 / xs.shape[1]
            d_h0, losses, hits = self.after_first_layer(self.first_layer(inputs), targets, scale, m.steps_taken)
            torch.sum(d_h0, 2, out=self.bias_grad)                                      # the first Linear's bias
            if self.optimizer.lr_in_gradients:
                self.optimizer.shrink(lr_factor)
                self.first_layer_step(inputs, d_h0)
                self.optimizer.step([None, self.bias_grad, self.flat_grad], lr_factor)
            else:
                self.optimizer.step([self.first_layer_step(inputs, d_h0), self.bias_grad, self.flat_grad], lr_factor)
        m.count_step()
        return losses, hits


def cross_entropy_step(logits, targets, scale):
    """Mean cross-entropy per model, hits per model, and the gradient of each model's loss times `scale` (a [K]
    tensor, e.g. lr_k / B, or a number) with respect to logits [K, 10, B]: softmax − one-hot.

    A sample counts as a hit when its target's logit is the largest (argmax's answer, but for exact ties).
    """
    target = targets.unsqueeze(1)                                         # [K, 1, B]
    top = logits.amax(1, keepdim=True)
    at_target = logits.gather(1, target)
    e = (logits - top).exp_()
    total = e.sum(1, keepdim=True)
    losses = (total.log() + top - at_target).mean((1, 2))
    hits = (at_target >= top).sum((1, 2))
    grad = e.div_(total).scatter_add_(1, target, torch.full_like(at_target, -1.0))
    return losses, hits, grad.mul_(scale.view(-1, 1, 1) if torch.is_tensor(scale) else scale)


def run_epoch(trainer, train, order, batch_size, schedule=None, total_steps=1, before_step=None):
    """One epoch of every model of `trainer`; seed u's models visit the samples in the order order[u]. Returns the
    epoch's mean training loss and accuracy per model, left on the device: nothing here reads a value back to the
    host. `before_step(step)` runs before every step (curves, checkpoints, a progress bar)."""
    X, y = train
    m = trainer.models
    loss_sum = torch.zeros(m.K, device=X.device, dtype=X.dtype)
    hits = torch.zeros(m.K, device=X.device, dtype=torch.int64)
    for idx in order.split(batch_size, dim=1):
        if before_step is not None:
            before_step(m.steps_taken)
        factor = schedule(m.steps_taken / total_steps) if schedule else 1.0
        flat = idx.reshape(-1)   # index_select copies whole rows: on the CPU faster than X[idx]
        losses, hits_step = trainer.step(X.index_select(0, flat).view(*idx.shape, -1),
                                         y.index_select(0, flat).view(idx.shape), factor)
        loss_sum += losses * idx.shape[1]
        hits += hits_step
    return loss_sum / order.shape[1], hits / order.shape[1]


def curve_points(epochs, steps, evals_per_epoch):
    """The steps at which train_runs measures a curve split's accuracy: evals_per_epoch per epoch, none for 1."""
    per_epoch = [round(i * steps / evals_per_epoch) for i in range(evals_per_epoch)] if evals_per_epoch > 1 else []
    return [e * steps + i for e in range(epochs) for i in per_epoch]


@dataclass
class Pass:
    """What train_runs returns. `models`: the trained StackedMLP; `history`: {metric: array}, rows in the order of the
    runs given; `snapshots`: {step: StackedMLP} checkpoints; `model_epochs`: the training done, in epochs of the
    full 60,000-image training set (the unit of the benchmark's floor)."""
    models: StackedMLP
    history: dict
    snapshots: dict
    model_epochs: float


def train_runs(runs, data, epochs, batch_size=64, optimizer="sgd", *, evaluate=(), every_epoch=True, curve=None,
               evals_per_epoch=1, initial_loss=None, schedule=None, snapshot_at=(), dtype=torch.float32, log=False,
               progress=None):
    """Train every run in one pass on data["train"] and measure on the splits named: `evaluate` (loss and accuracy
    after every epoch, or only after the last), `curve` (accuracy `evals_per_epoch` times an epoch), `initial_loss`
    (the loss before any step). `schedule(fraction done)` scales every lr at every step; `snapshot_at`: the steps
    at which to keep a copy of the models. `progress`: the text of a progress bar (None: no bar).
    """
    data = {name: (X.to(dtype), y) for name, (X, y) in data.items()}
    X, y = data["train"]
    if len(X) % batch_size == 1 and any(norm_of(r.arch).batch_statistics for r in runs):
        raise ValueError(f"{len(X):,} training images in batches of {batch_size} end in a batch of one image, whose "
                         "batch statistics are undefined: change the set size or the batch size")
    stats = (X.mean(), X.std()) if any(r.arch.standardize for r in runs) else None
    trainer = Trainer(runs, X.device, dtype, optimizer, stats)
    m = trainer.models
    generators = [torch.Generator().manual_seed(s) for s in m.seeds]
    steps = math.ceil(len(X) / batch_size)
    curve_at = set(curve_points(epochs, steps, evals_per_epoch)) if curve else set()
    snapshots, rows, points = {}, [], []
    start = m.evaluate(data[initial_loss])[0] if initial_loss else None
    with bar(progress, epochs * steps, record=progress and f"{progress}: {len(runs)} runs × {epochs} epoch"
             f"{'s' if epochs > 1 else ''} of {len(X):,} images") as meter:
        def before_step(step):
            if step in curve_at:
                points.append(m.evaluate(data[curve])[1])
            if step in snapshot_at and step not in snapshots:
                snapshots[step] = m.snapshot()
            if meter is not None and step > 0:
                meter.update()   # the step just taken

        for epoch in range(1, epochs + 1):
            order = torch.stack([epoch_permutation(len(X), g) for g in generators]).to(X.device)
            train_loss, train_acc = run_epoch(trainer, data["train"], order, batch_size, schedule, epochs * steps,
                                              before_step)
            row = {"train_loss": train_loss, "train_acc": train_acc}
            for split in evaluate:
                if every_epoch or epoch == epochs:
                    row[f"{split}_loss"], row[f"{split}_acc"] = m.evaluate(data[split])
                else:
                    row[f"{split}_loss"] = row[f"{split}_acc"] = torch.full((m.K,), float("nan"), device=m.device)
            rows.append({k: m.per_run(v) for k, v in row.items()})
            for arch in dict.fromkeys(r.arch for r in runs) if log else ():   # one line per architecture
                mine = [i for i, r in enumerate(runs) if r.arch == arch]
                line = epoch_line(f"{arch.label} ×{len(mine)}", epoch, epochs, {k: v[mine] for k, v in rows[-1].items()})
                (meter.write if meter is not None else print)(line)
        if meter is not None:
            meter.update()
    if m.steps_taken in snapshot_at and m.steps_taken not in snapshots:   # the end of training
        snapshots[m.steps_taken] = m.snapshot()
    history = {k: np.stack([r[k] for r in rows], 1) for k in rows[0]}
    if start is not None:
        history["initial_loss"] = m.per_run(start)
    if curve_at:
        points.append(m.evaluate(data[curve])[1])
        history["curve_steps"] = np.array(sorted(curve_at) + [epochs * steps])
        history["curve_acc"] = m.per_run(torch.stack(points, 1))
    return Pass(m, history, snapshots, len(runs) * epochs * len(X) / TRAIN_IMAGES)


def epoch_line(label, epoch, epochs, row):
    """One line of progress: the epoch's metrics (row: {metric: per-run values}) averaged over the runs."""
    parts = [f"train loss {row['train_loss'].mean():.3f}, acc {row['train_acc'].mean():.1%}"]
    parts += [f"{name[:-4]} loss {np.nanmean(row[name[:-4] + '_loss']):.3f}, acc {np.nanmean(row[name]):.1%}"
              for name in row if name.endswith("_acc") and name != "train_acc" and np.isfinite(row[name]).any()]
    K = len(row["train_loss"])
    return f"{label} epoch {epoch}/{epochs}: " + " | ".join(parts) + (f" (mean of {K})" if K > 1 else "")
