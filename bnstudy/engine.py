"""The stacked engine: K models of one architecture trained in one pass, with the arithmetic of the textbook loop.

Runs that share a seed share the batch order (the study's paired design), and their first layers are one GEMM.
Activations are feature-major, [K, F, B], so that every later Linear is one batched matmul and the K models'
BatchNorm units are the K * F channels of one call to PyTorch's fused kernel. Nothing inside the step loop reads
a value back to the host. The tests check the engine against one model at a time trained by torch.optim.
"""
import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import epoch_permutation, standardized, without
from .models import BN_EPS, DROPOUT_STREAM, MLP, FrozenBatchNorm1d, bn_noise, counter_uniform, make_model, norm_layers
from .stats import one_se_pick


ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults


@dataclass(frozen=True)
class Run:
    """What each model of a stacked pass has of its own. Runs with the same seed share batch order and init."""
    seed: int
    lr: float = 0.001
    momentum: float = 0.0      # SGD only, PyTorch's convention: buf = momentum * buf + grad; 0 is plain SGD
    weight_decay: float = 0.0  # L2, added to the gradient as torch.optim does
    dropout: float = 0.0       # after every hidden ReLU (and its BatchNorm, if placed there)
    init_scale: float = 1.0    # multiplies the default init of every Linear, weights and biases
    he_init: bool = False      # He init (kaiming_normal_, fan_in, relu) with zero biases instead of the default


def feature_major_index(F_, B, device):
    """Counter indices for [..., F, B] activations: unit f, and (sample b, unit f) as b * F + f, as one model counts."""
    units = torch.arange(F_, device=device)[:, None]
    return units, torch.arange(B, device=device) * F_ + units


def correct(logits, targets):
    """Per model, how many samples logits [K, 10, B] classify as targets ([B], or [K, B] per model): a [K] tensor.

    The same indices as logits.argmax(1); PyTorch's CPU argmax is much faster over a contiguous last axis.
    """
    return (logits.transpose(1, 2).contiguous().argmax(-1) == targets).sum(1)


class Stack:
    """K models of one `Arch` held as stacked tensors, so that one pass of the engine trains all of them.

    The K runs form U groups of G, one group per seed; a group shares its batch order. The first Linear of a group
    is one [784, G * F1] matrix: with U = 1 the first layer of all K models is a single GEMM, the largest and most
    efficient matmul this model has. Hidden activations are feature-major, [K, F, B]; later Linears are [K, F_out, F_in].
    """

    def __init__(self, arch, runs, device, dtype=torch.float32, optimizer="sgd"):
        if optimizer not in ("sgd", "adam"):
            raise ValueError(f"unknown optimizer {optimizer!r}: use 'sgd' (with per-run momentum) or 'adam'")
        seeds = list(dict.fromkeys(r.seed for r in runs))
        groups = [[i for i, r in enumerate(runs) if r.seed == s] for s in seeds]
        if len({len(g) for g in groups}) != 1:
            raise ValueError("every seed of a pass needs the same number of runs (they share its batch order)")
        self.order_of_runs = [i for g in groups for i in g]  # stack position -> position in `runs`
        self.runs = [runs[i] for i in self.order_of_runs]
        self.arch, self.optimizer, self.seeds = arch, optimizer, seeds
        self.K, self.U, self.G = len(runs), len(seeds), len(groups[0])
        self.device, self.dtype, self.steps_taken, self.bn_momentum = torch.device(device), dtype, 0, 0.1
        models = [make_model(lambda r=r: MLP(arch, r.dropout), r.seed, "cpu", r.init_scale, r.he_init)[0]
                  for r in self.runs]
        self._stack_tensors(models)
        self._per_run_settings()
        self.state, self.snapshots = [{} for _ in self.specs], {}  # snapshots: checkpoints by step, if asked

    def _per_run_settings(self):
        """Each run's own settings as [K] tensors on the device; Python flags for what no run uses."""
        column = lambda attr, dtype=self.dtype: torch.tensor([getattr(r, attr) for r in self.runs],  # noqa: E731
                                                              dtype=dtype, device=self.device)
        self.lr, self.momentum, self.weight_decay = column("lr"), column("momentum"), column("weight_decay")
        self.dropout = column("dropout", torch.float64).view(self.K, 1, 1)
        self.seed_column = column("seed", torch.int64).view(self.K, 1, 1)
        self.any_dropout = any(r.dropout for r in self.runs)  # Python bools: no device read inside the loop
        self.any_weight_decay = any(r.weight_decay for r in self.runs)
        self.fused_sgd = self.optimizer == "sgd" and not any(r.momentum for r in self.runs)

    def seed_draws(self, draw):
        """Call `draw` once per seed (`draw(seeds)` returns a tuple of [len(seeds), ...] tensors) and repeat each row for
        the G runs of that seed: a tuple of [K, ...] tensors, row k for model k.

        Dropout masks and BatchNorm noise depend on the seed, not on the run, so the G runs of a seed draw the same
        numbers: drawing once per seed does G times less hashing than drawing per model.
        """
        if self.seeds is None or self.G == 1:  # a snapshot (seeds None) need not hold its models in seed groups
            return draw(self.seed_column)
        return tuple(t.repeat_interleave(self.G, 0) for t in draw(self.seed_column[:: self.G]))

    def _stack_tensors(self, models):
        """Copy the K modules' tensors into the stacked layout, and list each parameter with its per-model view."""
        K, U, G, dev, dt = self.K, self.U, self.G, self.device, self.dtype
        put = lambda tensors: torch.stack([t.detach() for t in tensors]).to(dev, dt)  # noqa: E731
        linears = [[m for m in model.layers if isinstance(m, nn.Linear)] for model in models]
        norms = [norm_layers(model) for model in models]
        F1 = linears[0][0].out_features
        self.W = [put([ls[0].weight for ls in linears]).view(U, G * F1, 784)]  # nn.Linear's [out, in], K models tall
        self.b = [put([ls[0].bias for ls in linears]).view(U, G * F1, 1)]
        for j in range(1, len(linears[0])):
            self.W.append(put([ls[j].weight for ls in linears]).requires_grad_())               # [K, F_out, F_in]
            self.b.append(put([ls[j].bias for ls in linears]).unsqueeze(-1).requires_grad_())   # [K, F_out, 1]
        self.gamma = [put([n[i].weight for n in norms]).requires_grad_() for i in range(len(norms[0]))]  # [K, F]
        self.beta = [put([n[i].bias for n in norms]).requires_grad_() for i in range(len(norms[0]))]
        self.running_mean = [torch.zeros(g.numel(), device=dev, dtype=dt) for g in self.gamma]  # [K * F]
        self.running_var = [torch.ones(g.numel(), device=dev, dtype=dt) for g in self.gamma]
        self.frozen = [False] * len(self.gamma)  # frozen BatchNorm: statistics taken yet?
        first = [(U, G, F1, 784), (U, G, 1, 1)], [(U, G, F1, 1), (U, G, 1, 1)]
        self.small = self.W[1:] + self.b[1:] + self.gamma + self.beta  # what autograd differentiates
        self.specs = [(self.W[0], *first[0]), (self.b[0], *first[1])] + [
            (p, p.shape, (K,) + (1,) * (p.dim() - 1)) for p in self.small]

    def normalise(self, i, h, training, step):
        """Hidden layer i's normalisation of h [K, F, B] (features by samples), for all K models at once."""
        K, F_, B = h.shape
        norm, eps = self.arch.norm, BN_EPS
        if norm in ("batchnorm", "batchnorm_after_relu", "noisy_batchnorm") or norm == "ghost_batchnorm" and not training:
            # The K models' units are K * F channels of one [1, K * F, B] input: PyTorch's kernel does them all at once
            out = F.batch_norm(h.reshape(1, K * F_, B), self.running_mean[i], self.running_var[i],
                               self.gamma[i].view(-1), self.beta[i].view(-1), training, self.bn_momentum, eps)
            out = out.view(K, F_, B)
            if norm == "noisy_batchnorm" and training:
                units, samples = feature_major_index(F_, B, h.device)
                # drawn in float64 once per seed, cast before seed_draws repeats them for the seed's runs
                scale, shift = self.seed_draws(lambda seed: tuple(t.to(out.dtype) for t in bn_noise(
                    seed, step, i, self.arch.noise, units, samples)))
                out = out * scale + shift
            return out
        if norm == "ghost_batchnorm":
            return self.ghost_batch_norm(i, h)
        gamma, beta = self.gamma[i][..., None], self.beta[i][..., None]   # [K, F, 1]: broadcast over the samples
        if norm in ("layernorm", "groupnorm"):  # statistics over the units (of a group) of each sample: sample-major
            per_sample = h.transpose(1, 2).reshape(K * B, F_)
            out = F.group_norm(per_sample, self.arch.groups if norm == "groupnorm" else 1, eps=eps)
            return torch.addcmul(beta, out.view(K, B, F_).transpose(1, 2), gamma)
        if training and not self.frozen[i]:  # frozen BatchNorm: take the statistics of the first batch, once
            with torch.no_grad():
                self.running_mean[i].copy_(h.mean(2).view(-1)), self.running_var[i].copy_(h.var(2, False).view(-1))
            self.frozen[i] = True
        mean, var = self.running_mean[i].view(K, F_, 1), self.running_var[i].view(K, F_, 1)
        return (h - mean) / torch.sqrt(var + eps) * gamma + beta

    def ghost_batch_norm(self, i, h):
        """Training-mode ghost BatchNorm of h [K, F, B]: statistics over consecutive groups of g samples.

        Each (model, unit, group) is one channel of a [1, K * F * B / g, g] input to PyTorch's fused kernel.
        """
        K, F_, B = h.shape
        g = math.gcd(self.arch.ghost, B)
        groups = h.reshape(1, K * F_ * (B // g), g)
        with torch.no_grad():  # running statistics: the mean over groups of their means and unbiased variances
            rows = groups.view(K * F_, B // g, g)
            mean = rows.mean(2)  # two passes: on the CPU torch.var_mean is slow on many short rows
            var = (rows - mean[..., None]).square().mean(2)
            self.running_mean[i].lerp_(mean.mean(1), self.bn_momentum)
            self.running_var[i].lerp_((var * (g / (g - 1))).mean(1), self.bn_momentum)
        normalised = F.batch_norm(groups, None, None, training=True, eps=BN_EPS).view(K, F_, B)
        return torch.addcmul(self.beta[i][..., None], normalised, self.gamma[i][..., None])

    def hidden_and_output(self, h, training, step=None, relu_inputs=None):
        """From the first Linear's output h [K, F1, B] to the logits [K, 10, B]: norms, ReLUs, dropout, Linears."""
        after_relu = self.arch.norm == "batchnorm_after_relu"
        for i in range(len(self.arch.hidden)):
            if self.arch.norm != "none" and not after_relu:
                h = self.normalise(i, h, training, step)
            if relu_inputs is not None:
                relu_inputs.append(h)
            h = torch.relu(h)
            if after_relu:
                h = self.normalise(i, h, training, step)
            if training and self.any_dropout:  # masks from counter_uniform: model k's are those of its own seed
                _, index = feature_major_index(h.shape[1], h.shape[2], h.device)
                keep = self.seed_draws(lambda seed: (counter_uniform(seed, step, DROPOUT_STREAM + i, index),))[0] >= self.dropout
                h = h * (keep.to(h.dtype) / (1 - self.dropout).to(h.dtype))
            h = torch.baddbmm(self.b[i + 1], self.W[i + 1], h)  # [K, F_next, B]
        return h

    def first_layer(self, x):
        """The first Linear, feature-major: x [U, B, 784] (each seed its own batch) or x [N, 784] (shared) -> [K, F1, B]."""
        if x.dim() == 3:
            return torch.baddbmm(self.b[0], self.W[0], x.transpose(1, 2)).view(self.K, -1, x.shape[1])
        W, b = self.W[0].view(-1, 784), self.b[0].view(-1, 1)  # all K models stacked: one GEMM
        return torch.addmm(b, W, x.T).view(self.K, -1, len(x))

    def train_step(self, xb, yb, lr_factor=1.0):
        """One SGD (or Adam) step of all K models on xb [U, B, 784], yb [U, B]; per-model loss and hits stay on device.

        Autograd differentiates everything after the first Linear. The first Linear, where almost all the arithmetic
        is, gets its weight gradient as one batched GEMM written straight into the weights (plain SGD) or into a
        preallocated buffer (momentum, Adam): no new 6 MB gradient tensor at every step.
        """
        with torch.no_grad():
            h0 = self.first_layer(xb)                                      # [K, F1, B]
        h0.requires_grad_()
        logits = self.hidden_and_output(h0, training=True, step=self.steps_taken)     # [K, 10, B]
        targets = yb.expand(self.K, -1) if self.U == 1 else yb.repeat_interleave(self.G, 0)
        losses = F.cross_entropy(logits, targets, reduction="none").mean(1)
        lr = self.lr if lr_factor == 1.0 else self.lr * lr_factor   # [K]; x * 1.0 is x: no op without a schedule
        # plain SGD differentiates sum_k lr_k * L_k: every gradient comes out scaled by its own model's lr, ready to apply
        objective = losses @ lr if self.fused_sgd else losses.sum()
        grads = torch.autograd.grad(objective, [h0] + self.small)
        with torch.no_grad():
            self.update(xb, grads[0].reshape(self.U, -1, xb.shape[1]), list(grads[1:]), lr)
        self.steps_taken += 1
        return losses.detach(), correct(logits.detach(), targets)

    def update(self, xb, d_h0, grads, lr):
        """Apply the optimiser to every parameter, each model at its lr [K] of this step; d_h0 [U, G * F1, B] is the
        gradient at the first Linear's output.

        For plain SGD (fused_sgd) train_step hands over gradients already multiplied by each model's lr."""
        (W0, _, _), (b0, _, _) = self.specs[:2]
        if not self.fused_sgd:
            grads = [torch.bmm(d_h0, xb, out=self.state[0].setdefault("grad", torch.empty_like(W0))),
                     d_h0.sum(2, keepdim=True)] + grads
            for (p, p_shape, per_model), g, state in zip(self.specs, grads, self.state):
                self.optimizer_step(p.view(p_shape), g.view(p_shape), state, lr.view(per_model), per_model)
            return
        if self.any_weight_decay:  # torch's SGD adds weight_decay * w to the gradient: the same as shrinking w first
            for p, p_shape, per_model in self.specs:
                p.view(p_shape).mul_(1 - (lr * self.weight_decay).view(per_model))
        W0.baddbmm_(d_h0, xb, alpha=-1)   # W -= (lr * dH) X: one batched GEMM updates the first Linear in place
        b0.sub_(d_h0.sum(2, keepdim=True))
        torch._foreach_sub_(self.small, grads)  # one multi-tensor call for all the small parameters

    def optimizer_step(self, p, g, state, lr, per_model):
        """torch.optim's SGD (momentum, weight decay) or Adam update of one parameter, each model with its own settings."""
        if self.any_weight_decay:
            g = g + self.weight_decay.view(per_model) * p
        if self.optimizer == "sgd":  # buf = momentum * buf + g, starting from 0: at the first step buf = g, as in torch
            buf = state.setdefault("momentum_buffer", torch.zeros_like(p))
            buf.mul_(self.momentum.view(per_model)).add_(g)
            p.sub_(lr * buf)
            return
        (beta1, beta2), t = ADAM_BETAS, self.steps_taken + 1
        m, v = state.setdefault("exp_avg", torch.zeros_like(p)), state.setdefault("exp_avg_sq", torch.zeros_like(p))
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (v.sqrt() / math.sqrt(1 - beta2 ** t)).add_(ADAM_EPS)
        p.sub_(lr / (1 - beta1 ** t) * m / denom)

    def logits(self, x, chunk=2000):
        """Eval-mode logits [K, 10, N] of all K models for the same images x [N, 784]."""
        with torch.no_grad():
            return torch.cat([self.hidden_and_output(self.first_layer(xc), training=False) for xc in x.split(chunk)], 2)

    def evaluate(self, data, chunk=2000):
        """Mean cross-entropy and accuracy of each of the K models on (X, y), as two [K] tensors on the device."""
        X, y = data
        loss, hits = 0.0, 0
        for xc, yc in zip(X.split(chunk), y.split(chunk)):
            out = self.logits(xc, chunk)
            loss = loss + F.cross_entropy(out, yc.expand(self.K, -1), reduction="none").sum(1)
            hits = hits + correct(out, yc)
        return loss / len(X), hits / len(X)

    def per_run(self, values):
        """A [K, ...] tensor in stack order as a float64 NumPy array in the order of the runs given."""
        return values.double().cpu().numpy()[np.argsort(self.order_of_runs)]

    def to_modules(self):
        """The K trained models as plain MLP modules (in the order of the runs given), e.g. to probe one of them."""
        K = self.K
        linear = [(W.view(K, -1, W.shape[-1]), b.view(K, -1)) for W, b in zip(self.W, self.b)]
        models = []
        for k, run in enumerate(self.runs):
            model = MLP(self.arch, run.dropout).to(self.device, self.dtype)
            linears = [m for m in model.layers if isinstance(m, nn.Linear)]
            norms = norm_layers(model)
            with torch.no_grad():
                for layer, (W, b) in zip(linears, linear):
                    layer.weight.copy_(W[k]), layer.bias.copy_(b[k])
                for i, layer in enumerate(norms):
                    layer.weight.copy_(self.gamma[i][k]), layer.bias.copy_(self.beta[i][k])
                    F_ = self.gamma[i].shape[1]
                    for name in ("running_mean", "running_var", "mean", "var"):
                        if hasattr(layer, name):  # FrozenBatchNorm1d keeps its statistics as mean and var
                            stat = self.running_mean[i] if "mean" in name else self.running_var[i]
                            getattr(layer, name).copy_(stat.view(K, F_)[k])
                    if isinstance(layer, FrozenBatchNorm1d):
                        layer.initialised.fill_(self.frozen[i])
                    if hasattr(layer, "num_batches_tracked"):
                        layer.num_batches_tracked.fill_(self.steps_taken)
            models.append(model)
        return [models[self.order_of_runs.index(i)] for i in range(K)]

    def precise_bn(self, X, batch_size=64):
        """Precise BatchNorm (Wu & Johnson, 2021; fvcore's update_bn_stats): with the weights frozen, replace the running
        statistics by the plain average, over batches of X, of the batch means and unbiased batch variances."""
        if self.arch.norm not in ("batchnorm", "batchnorm_after_relu"):
            raise ValueError("precise BatchNorm is defined here for plain BatchNorm models")
        momentum = self.bn_momentum
        with torch.no_grad():
            for j, xb in enumerate(X.split(batch_size)):
                self.bn_momentum = 1 / (j + 1)  # after batch j the running value is the mean of batches 0..j
                self.hidden_and_output(self.first_layer(xb), training=True, step=self.steps_taken)
        self.bn_momentum = momentum

    def snapshot(self, rows=None):
        """A copy of models `rows` (stack positions; default all) as they are now, with tensors of their own: a
        checkpoint to probe later. It keeps each run's settings; it is probed, not trained (it has no optimiser)."""
        K, rows = self.K, list(range(self.K)) if rows is None else list(rows)
        pick = torch.tensor(rows, device=self.device)
        part = copy.copy(self)
        part.K, part.U, part.G = len(rows), 1, len(rows)
        F1 = self.W[0].shape[1] // self.G
        part.W = [self.W[0].detach().reshape(K, F1, -1)[pick].reshape(1, len(rows) * F1, -1).clone()]
        part.b = [self.b[0].detach().reshape(K, F1, 1)[pick].reshape(1, len(rows) * F1, 1).clone()]
        part.W += [W.detach()[pick].clone() for W in self.W[1:]]
        part.b += [b.detach()[pick].clone() for b in self.b[1:]]
        for name in ("gamma", "beta"):
            setattr(part, name, [t.detach()[pick].clone() for t in getattr(self, name)])
        for name in ("running_mean", "running_var"):
            setattr(part, name, [t.view(K, -1)[pick].reshape(-1).clone() for t in getattr(self, name)])
        part.runs, part.order_of_runs, part.seeds = [self.runs[r] for r in rows], list(range(len(rows))), None
        part._per_run_settings()   # the kept runs' lr, momentum, ... and the flags that hold for this subset
        part.frozen, part.state, part.small, part.specs = list(self.frozen), None, None, None
        part.snapshots = {}
        return part

    def positions(self, keep):
        """Stack positions of the runs for which keep(run) is true, in stack order (seed by seed)."""
        return [k for k, run in enumerate(self.runs) if keep(run)]

    def batch_logits(self, X):
        """Each model's training-mode logits (BatchNorm with batch statistics) on one batch X that all K see: [K, 10, N]."""
        return self.hidden_and_output(self.first_layer(X), training=True, step=0)

    def batch_loss(self, X, y):
        """Each model's training-mode loss on one batch that all K see: a [K] tensor."""
        return F.cross_entropy(self.batch_logits(X), y.expand(self.K, -1), reduction="none").mean(1)

    def probe_parameters(self, which="all"):
        """A checkpoint's tensors to differentiate, made leaves that require grad: each Linear's weight and bias
        ("linear"), or those and the normalisation's γ and β ("all")."""
        return [p.requires_grad_() for p in self.W + self.b + ([] if which == "linear" else self.gamma + self.beta)]


def keep_snapshot(stack, snapshot_at):
    """If the step the stack has reached is in snapshot_at, keep a copy of its models (once per step)."""
    if stack.steps_taken in snapshot_at and stack.steps_taken not in stack.snapshots:
        stack.snapshots[stack.steps_taken] = stack.snapshot()


def run_epoch(stack, train, order, batch_size, probe=None, curve_at=(), schedule=None, total_steps=1, snapshot_at=()):
    """One epoch of all K models in `stack`; model group u visits the samples in the order order[u].

    Returns the epoch's mean training loss and accuracy per model, and the accuracy on `probe` at the steps in
    `curve_at`, all as tensors left on the device: nothing here reads a value back to the host. At the steps in
    `snapshot_at` it keeps a copy of the models in stack.snapshots[step].
    """
    X, y = train
    loss_sum = torch.zeros(stack.K, device=X.device, dtype=X.dtype)
    hits, curve = torch.zeros(stack.K, device=X.device, dtype=torch.int64), []
    for idx in order.split(batch_size, dim=1):
        if stack.steps_taken in curve_at:
            curve.append(stack.evaluate(probe)[1])
        keep_snapshot(stack, snapshot_at)
        factor = schedule(stack.steps_taken / total_steps) if schedule else 1.0
        rows = idx.reshape(-1)  # index_select copies whole rows: on the CPU faster than X[idx]
        losses, hits_step = stack.train_step(X.index_select(0, rows).view(*idx.shape, -1),
                                             y.index_select(0, rows).view(idx.shape), factor)
        loss_sum += losses * idx.shape[1]
        hits += hits_step
    keep_snapshot(stack, snapshot_at)  # the step after the epoch's last: the end of training, if it is the last epoch
    return loss_sum / order.shape[1], hits / order.shape[1], curve


EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")
MODEL_EPOCHS = {"trained": 0.0}  # model-epochs of 60,000 images trained by train_runs (the notebook resets it)


def train_runs(arch, runs, data, epochs, batch_size=64, optimizer="sgd", evals_per_epoch=1, schedule=None,
               label="", log=True, dtype=torch.float32, every_epoch=True, snapshot_at=()):
    """Train every run in one stacked pass. data: {"train", "test"[, "val", "probe"]: (X, y)} on one device.

    Returns the Stack and {metric: array}, rows in the order of `runs`: EPOCH_METRICS [len(runs), epochs] (val and
    test after every epoch, or only the last), "initial_loss" (probe, else test split) before any step, "curve_acc"
    on the probe split at "curve_steps". `schedule(fraction done)` scales every lr; `snapshot_at`: see run_epoch.
    """
    data = {name: (X.to(dtype), y) for name, (X, y) in data.items()}
    data = standardized(data) if arch.standardize else data
    X = data["train"][0]
    if len(X) % batch_size == 1 and arch.norm not in ("none", "layernorm", "groupnorm"):
        raise ValueError(f"{len(X):,} training images in batches of {batch_size} end in a batch of one image, whose "
                         "batch statistics are undefined: change the set size or the batch size")
    stack = Stack(arch, runs, X.device, dtype, optimizer)
    generators = [torch.Generator().manual_seed(s) for s in stack.seeds]
    steps = math.ceil(len(X) / batch_size)
    curve_at = set(curve_points(epochs, steps, evals_per_epoch))
    rows, curve, initial_loss = [], [], stack.evaluate(data.get("probe", data.get("test", data.get("val"))))[0]  # before any step
    for epoch in range(1, epochs + 1):
        order = torch.stack([epoch_permutation(len(X), g) for g in generators]).to(X.device)
        train_loss, train_acc, points = run_epoch(stack, data["train"], order, batch_size, data.get("probe"),
                                                  curve_at, schedule, epochs * steps, snapshot_at)
        curve += points
        held_out = [stack.evaluate(data[s]) if s in data and (every_epoch or epoch == epochs)
                    else (train_loss * np.nan,) * 2 for s in ("val", "test")]
        rows.append(torch.stack([train_loss, train_acc, *held_out[0], *held_out[1]]).double().cpu().numpy())
        if log:
            print(epoch_line(label, epoch, epochs, rows[-1]))
    if curve_at:
        curve.append(stack.evaluate(data["probe"])[1])
    MODEL_EPOCHS["trained"] += len(runs) * epochs * len(X) / 60_000
    return stack, history_of(stack, rows, initial_loss, sorted(curve_at) + [epochs * steps] if curve_at else [], curve)


def curve_points(epochs, steps, evals_per_epoch):
    """The steps at which train_runs measures the probe accuracy: evals_per_epoch per epoch, none for 1."""
    per_epoch = [round(i * steps / evals_per_epoch) for i in range(evals_per_epoch)] if evals_per_epoch > 1 else []
    return [e * steps + i for e in range(epochs) for i in per_epoch]


def history_of(stack, rows, initial_loss, curve_steps, curve):
    """train_runs' results as NumPy arrays, rows in the order of the runs given."""
    back = np.argsort(stack.order_of_runs)  # stack position -> the caller's order of runs
    history = {m: np.stack(rows, axis=2)[i][back] for i, m in enumerate(EPOCH_METRICS)}
    history["initial_loss"] = stack.per_run(initial_loss)
    if curve:
        history["curve_steps"], history["curve_acc"] = np.array(curve_steps), stack.per_run(torch.stack(curve, 1))
    return history


def epoch_line(label, epoch, epochs, row):
    """One line of progress: the epoch's metrics (rows of `row`, as EPOCH_METRICS), averaged over the K models."""
    K, val = row.shape[1], (f"val acc {np.nanmean(row[3]):.1%} | " if np.isfinite(row[3]).any() else "")
    return (f"{label} epoch {epoch}/{epochs}: train loss {row[0].mean():.3f}, acc {row[1].mean():.1%} | {val}"
            f"test loss {np.mean(row[4]):.3f}, acc {np.mean(row[5]):.1%}" + (f" (mean of {K})" if K > 1 else ""))


def grid_runs(seeds, rates, **settings):
    """One Run per (seed, rate), seeds outermost: the runs of a seed share its batch order in the engine."""
    return [Run(seed, rate, **settings) for seed in seeds for rate in rates]


def rates_first(values, n_rates):
    """Per-run values of grid_runs (seed by seed, rates inside), reshaped from [seeds * rates, ...] to [rates, seeds, ...]."""
    return np.swapaxes(values.reshape(-1, n_rates, *values.shape[1:]), 0, 1)


def by_rate(history, n_rates):
    """A history of grid_runs, every metric as [rates, seeds, ...]."""
    return {m: rates_first(v, n_rates) if m != "curve_steps" else v for m, v in history.items()}


def best_rate(sweep):
    """Index of the chosen lr: the smallest within one standard error of the best mean final validation accuracy.

    `sweep` holds the tuning seeds only: the validation split of other seeds than the reporting ones decides.
    """
    return one_se_pick(sweep["val_acc"][..., -1])


def tune_rates(arch, rates, seeds, data, epochs, batch_size=64, optimizer="sgd", schedule=None, **settings):
    """Train every rate on the tuning `seeds` and choose one: the sweep ([rates, seeds, ...]) and best_rate's index.

    The test split is dropped here, so that no choice can see it; the validation split decides.
    """
    _, history = train_runs(arch, grid_runs(seeds, rates, **settings), without(data, "test"), epochs, batch_size,
                            optimizer, schedule=schedule, log=False, every_epoch=False)
    sweep = by_rate(history, len(rates))
    return sweep, best_rate(sweep)


def report_runs(arch, runs, data, epochs, batch_size=64, optimizer="sgd", **options):
    """train_runs for reporting seeds, without the validation split: it chooses hyper-parameters (tune_rates) and
    is never reported, so evaluating it there would only cost time. val_loss and val_acc come back as NaN; a probe
    split for accuracy curves stays if `data` has one.
    """
    return train_runs(arch, runs, without(data, "val"), epochs, batch_size, optimizer, **options)
