"""K models held as stacked tensors, with the textbook arithmetic written out: forward, and backward by hand.

Every Linear is one [K, out, in] tensor and one [K, out] bias; every normalisation layer one weight and one bias
[K, F] (rows of models without that layer get no gradient; only weight decay moves them, and nothing reads them).
Activations are feature-major, [K, F, B] (models, units, samples): every Linear after the first is one batched matmul, and the K models' BatchNorm
units are the K * F channels of one call to PyTorch's kernel. Models of one architecture (`Arch`) form a contiguous
*block*; architectures may differ in their normalisation and inputs, never in their widths.

`forward` is differentiable (evaluation, and the probes, which differentiate it with autograd); `train_forward`
and `backward` are the training step's own pair, with no autograd graph: the same formulas as autograd's, one
kernel call each, and nothing read back to the host. The tests check both against `nn.Module`s and torch.optim.
"""
import copy
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from .counters import DROPOUT_STREAM, counter_uniform, feature_major_index
from .models import linear_layers, model_of, norm_layers
from .norms import Layer, Mode, norm_of
from .progress import bar


@dataclass
class Block:
    """The models of one architecture: stack rows start:stop, and per hidden layer the running buffers
    ([Kb, ...] by name) and Python-side flags of its normalisation."""
    arch: object
    start: int
    stop: int
    buffers: list = field(default_factory=list)
    flags: list = field(default_factory=list)

    @property
    def norm(self):
        return norm_of(self.arch)

    @property
    def rows(self):
        return slice(self.start, self.stop)


def predicted(logits):
    """Each model's predicted class for each sample of logits [K, 10, B]: a [K, B] tensor.

    The same indices as logits.argmax(1); PyTorch's CPU argmax is much faster over a contiguous last axis.
    """
    return logits.transpose(1, 2).contiguous().argmax(-1)


def correct(logits, targets):
    """Per model, how many samples logits [K, 10, B] classify as targets ([B], or [K, B] per model): a [K] tensor."""
    return (predicted(logits) == targets).sum(1)


class StackedMLP:
    """K models of one width profile (each run's own arch, seed, init) as stacked tensors on one device.

    `runs` in any order; the stack keeps them block by block (architecture), seed by seed inside a block, and
    `per_run` puts any [K, ...] result back in the order given. Built from the runs' freshly initialised modules.
    `input_stats` is the (mean, std) that standardised architectures subtract and divide by, the training split's
    pixel statistics.
    """

    def __init__(self, runs, device, dtype=torch.float32, input_stats=None):
        widths = {r.arch.hidden for r in runs}
        if len(widths) != 1:
            raise ValueError(f"one stack holds models of one width profile, got {sorted(widths)}")
        order = self._stack_order(runs)
        self.order_of_runs = order                                   # stack position -> position in `runs`
        self.runs = [runs[i] for i in order]
        self.K, self.device, self.dtype = len(runs), torch.device(device), dtype
        self.hidden = next(iter(widths))
        self.input_stats = input_stats
        self.steps_taken = 0   # training steps these models have taken (BatchNorm modules count them)
        self._stack_modules([model_of(run)[0] for run in self.runs])
        self._per_run_settings()

    @staticmethod
    def _stack_order(runs):
        """Block by block (architectures in order of first appearance), inside a block seed by seed."""
        archs = list(dict.fromkeys(r.arch for r in runs))
        order = []
        for arch in archs:
            mine = [i for i, r in enumerate(runs) if r.arch == arch]
            for seed in dict.fromkeys(runs[i].seed for i in mine):
                order += [i for i in mine if runs[i].seed == seed]
        return order

    def _stack_modules(self, modules):
        put = lambda tensors: torch.stack([t.detach() for t in tensors]).to(self.device, self.dtype)  # noqa: E731
        linears = [linear_layers(m) for m in modules]
        self.W = [put([ls[j].weight for ls in linears]) for j in range(len(linears[0]))]   # [K, out, in]
        self.b = [put([ls[j].bias for ls in linears]) for j in range(len(linears[0]))]     # [K, out]
        self.blocks, start = [], 0
        for arch in dict.fromkeys(r.arch for r in self.runs):
            stop = start + sum(r.arch == arch for r in self.runs)
            self.blocks.append(Block(arch, start, stop))
            start = stop
        self.normalised = any(block.norm.normalises for block in self.blocks)
        self.gamma, self.beta = [], []   # per hidden layer, [K, F]
        for i, width in enumerate(self.hidden if self.normalised else ()):
            self.gamma.append(torch.ones(self.K, width, device=self.device, dtype=self.dtype))
            self.beta.append(torch.zeros(self.K, width, device=self.device, dtype=self.dtype))
        for block in self.blocks:
            layers = [norm_layers(m) for m in modules[block.rows]] if block.norm.normalises else []
            for i in range(len(self.hidden) if block.norm.normalises else 0):
                self.gamma[i][block.rows] = put([ls[i].weight for ls in layers])
                self.beta[i][block.rows] = put([ls[i].bias for ls in layers])
                stacked = {name: torch.stack([getattr(ls[i], name).detach() for ls in layers]).to(self.device)
                           for name in block.norm.buffers}   # flags such as frozen BatchNorm's keep their dtype
                block.buffers.append({name: t.to(self.dtype) if t.is_floating_point() else t
                                      for name, t in stacked.items()})
                block.flags.append(dict(block.norm.flags))

    def _per_run_settings(self):
        """Each run's lr and dropout rate as tensors on the device, and its seed's place among the stack's seeds."""
        column = lambda attr, dtype=self.dtype: torch.tensor([getattr(r, attr) for r in self.runs],  # noqa: E731
                                                              dtype=dtype, device=self.device)
        self.lr = column("lr")   # the training step scales each model's loss by it; the probes step by it
        before = torch.tensor([r.arch.dropout_before_norm for r in self.runs], device=self.device).view(self.K, 1, 1)
        rates = column("dropout", torch.float64).view(self.K, 1, 1)
        self.dropout = torch.where(before, 0.0, rates)          # after the ReLU: the usual place
        self.dropout_before = torch.where(before, rates, 0.0)   # between the Linear and its normalisation
        self.any_dropout = any(r.dropout and not r.arch.dropout_before_norm for r in self.runs)  # Python bools: no
        self.any_dropout_before = any(r.dropout and r.arch.dropout_before_norm for r in self.runs)  # device reads
        seeds = list(dict.fromkeys(r.seed for r in self.runs))
        self.seeds = seeds
        self.seed_column = torch.tensor(seeds, dtype=torch.int64, device=self.device).view(-1, 1, 1)
        self.seed_of_row = torch.tensor([seeds.index(r.seed) for r in self.runs], device=self.device)

    # -----------------------------------------------------------------------------------------------------------
    # Accessors: what the probes and the tests read, without knowing the layout

    def linear(self, j):
        """Linear j's weight [K, out, in] and bias [K, out] (j = 0 is the first, on the input side)."""
        return self.W[j], self.b[j]

    def parameters(self, linears_only=False):
        """Every tensor training changes, input side first: each Linear's weight and bias, then (unless
        linears_only) each normalisation layer's weight and bias."""
        return [t for pair in zip(self.W, self.b) for t in pair] + ([] if linears_only else self.gamma + self.beta)

    def parameters_before(self, j):
        """The tensors of every layer before Linear j: Linears 0..j-1 and the normalisations between them."""
        return [t for pair in zip(self.W[:j], self.b[:j]) for t in pair] + self.gamma[:j] + self.beta[:j]

    def probe_parameters(self, linears_only=False):
        """`parameters`, made leaves that require grad, for a probe to differentiate."""
        return [p.requires_grad_() for p in self.parameters(linears_only)]

    def flatten_after_first_layer(self):
        """Move every parameter after the first Linear into one contiguous buffer (each tensor a [K, ...] piece of
        it, in `parameters()[2:]` order) and make this stack's tensors views of it; returns the buffer and the
        pieces' shapes. An optimiser step is then one operation on the buffer, where PyTorch's multi-tensor ops
        loop over the tensors one by one on the CPU; the first Linear keeps its own weight, which one matrix
        multiply per seed group reads."""
        small = self.parameters()[2:]                               # W1, b1, ..., WL, bL, γ..., β...
        flat = torch.cat([t.reshape(-1) for t in small])
        views, start = [], 0
        for t in small:
            views.append(flat[start:start + t.numel()].view(t.shape))
            start += t.numel()
        L, n_norm = len(self.hidden), len(self.gamma)
        self.W[1:], self.b[1:] = views[0:2 * L:2], views[1:2 * L:2]
        self.gamma, self.beta = views[2 * L:2 * L + n_norm], views[2 * L + n_norm:]
        return flat, [t.shape for t in small]

    def count_step(self):
        """One more training step taken (the BatchNorm modules of `to_modules` carry the count)."""
        self.steps_taken += 1

    def per_run(self, values):
        """A [K, ...] tensor in stack order as a float64 NumPy array in the order of the runs given."""
        return values.double().cpu().numpy()[np.argsort(self.order_of_runs)]

    def positions(self, keep):
        """Stack positions of the runs for which keep(run) is true, in stack order."""
        return [k for k, run in enumerate(self.runs) if keep(run)]

    def layer(self, i, block):
        """What a block's normalisation of hidden layer i is given: its rows of γ and β, its buffers and flags."""
        rows = block.rows
        return Layer(i, self.gamma[i][rows], self.beta[i][rows], block.buffers[i], block.flags[i], block.arch)

    def draws(self, rows=slice(None)):
        """Counter-based draws for the models `rows`: fn(seeds [S, 1, 1]) is drawn once per distinct seed of the stack,
        and each model gets its seed's numbers (dropout and noise depend on the seed, not on the run)."""
        index = self.seed_of_row[rows]
        return lambda fn: tuple(t.index_select(0, index) for t in fn(self.seed_column))

    # -----------------------------------------------------------------------------------------------------------
    # Forward, differentiable

    def block_input(self, block, x):
        if not block.arch.standardize:
            return x
        mean, std = self.input_stats
        return (x - mean) / std

    def first_layer(self, x):
        """The first Linear, feature-major, for images x [N, 784] that every model sees: [K, F1, N]."""
        W, b = self.W[0], self.b[0]
        if not any(block.arch.standardize for block in self.blocks):   # one GEMM for all K models
            return torch.addmm(b.reshape(-1, 1), W.reshape(-1, W.shape[-1]), x.T).view(self.K, -1, len(x))
        return torch.cat([torch.addmm(b[blk.rows].reshape(-1, 1), W[blk.rows].reshape(-1, W.shape[-1]),
                                      self.block_input(blk, x).T).view(blk.stop - blk.start, -1, len(x))
                          for blk in self.blocks])

    def normalise(self, i, h, mode, after_relu):
        """Hidden layer i's normalisations placed before (or after) the ReLU, block by block, on h [K, F, B]."""
        applying = [blk for blk in self.blocks if blk.norm.normalises and blk.norm.after_relu == after_relu]
        if len(applying) == 1 and len(self.blocks) == 1:
            return applying[0].norm.forward(self.layer(i, applying[0]), h, replace_draw(mode, self, applying[0]))
        if torch.is_grad_enabled():   # autograd may have saved h: compose the blocks' rows out of place
            return torch.cat([blk.norm.forward(self.layer(i, blk), h[blk.rows], replace_draw(mode, self, blk))
                              if any(blk is a for a in applying) else h[blk.rows] for blk in self.blocks])
        for blk in applying:   # h is a fresh result here: each block's rows are overwritten in place, no copy of all
            h[blk.rows] = blk.norm.forward(self.layer(i, blk), h[blk.rows], replace_draw(mode, self, blk))
        return h

    def dropout_mask(self, i, h, step, rates=None):
        """Inverted-dropout multipliers [K, F, B] for hidden layer i: model k's mask is that of its seed at `step`
        (rates: [K, 1, 1], default those after the ReLU; a rate of 0 keeps every unit)."""
        rates = self.dropout if rates is None else rates
        _, index = feature_major_index(h.shape[1], h.shape[2], h.device)
        u = self.draws()(lambda seed: (counter_uniform(seed, step, DROPOUT_STREAM + i, index),))[0]
        return (u >= rates).to(h.dtype) / (1 - rates).to(h.dtype)

    def hidden_and_output(self, h, mode, relu_inputs=None):
        """From the first Linear's output h [K, F1, B] to the logits [K, 10, B]: norms, ReLUs, dropout, Linears."""
        for i in range(len(self.hidden)):
            if mode.training and self.any_dropout_before:
                h = h * self.dropout_mask(i, h, mode.step, self.dropout_before)
            h = self.normalise(i, h, mode, False)
            if relu_inputs is not None:
                relu_inputs.append(h)
            h = self.normalise(i, torch.relu(h), mode, True)
            if mode.training and self.any_dropout:
                h = h * self.dropout_mask(i, h, mode.step)
            h = torch.baddbmm(self.b[i + 1][..., None], self.W[i + 1], h)   # [K, F_next, B]
        return h

    def forward(self, x, training=False, step=0):
        """Logits [K, 10, N] of all K models for the same images x [N, 784]; training: batch statistics."""
        return self.hidden_and_output(self.first_layer(x), Mode(training, step))

    def logits(self, x, chunk=2000):
        """Eval-mode logits [K, 10, N], in chunks of images, without autograd."""
        with torch.no_grad():
            return torch.cat([self.forward(xc) for xc in x.split(chunk)], 2)

    def evaluate(self, data, chunk=1000):
        """Mean cross-entropy and accuracy of each of the K models on (X, y), as two [K] tensors on the device."""
        X, y = data
        loss, hits = 0.0, 0
        for xc, yc in zip(X.split(chunk), y.split(chunk)):
            out = self.logits(xc, chunk)
            loss = loss + F.cross_entropy(out, yc.expand(self.K, -1), reduction="none").sum(1)
            hits = hits + correct(out, yc)
        return loss / len(X), hits / len(X)

    def correct_per_image(self, data, chunk=1000):
        """Whether each of the K models classifies each image of (X, y) correctly, in eval mode: a [K, N] bool tensor.

        Its mean over images is `evaluate`'s accuracy; kept per image, it lets a CI cover the sampling of the test
        images as well as the seeds (`bnstudy.stats.per_image`)."""
        X, y = data
        return torch.cat([predicted(self.logits(xc, chunk)) == yc for xc, yc in zip(X.split(chunk), y.split(chunk))],
                         1)

    def batch_logits(self, X):
        """Each model's training-mode logits (batch statistics, step 0) on one batch X that all K see: [K, 10, N].
        Like a training forward it moves the running statistics; no training-mode measure reads them."""
        return self.forward(X, training=True)

    def batch_loss(self, X, y):
        """Each model's training-mode loss on one batch that all K see: a [K] tensor."""
        return F.cross_entropy(self.batch_logits(X), y.expand(self.K, -1), reduction="none").mean(1)

    # -----------------------------------------------------------------------------------------------------------
    # The training step's forward and backward, by hand

    def train_forward(self, inputs, mode):
        """Training forward of the first Linear's outputs h0 [K, F1, B]; returns the logits and what backward needs."""
        h, saved = inputs, []
        after_relu = any(blk.norm.after_relu for blk in self.blocks)
        for i in range(len(self.hidden)):
            first = self.dropout_mask(i, h, mode.step, self.dropout_before) if self.any_dropout_before else None
            if first is not None:
                h = h * first
            u, before = self.train_normalise(i, h, mode, after_relu=False)
            a = torch.relu(u)
            # where the ReLU passes the gradient: its output > 0, the tensor the backward has just read (in cache),
            # unless a normalisation after the ReLU overwrites that output below
            passes = u if after_relu else a
            a, after = self.train_normalise(i, a, mode, after_relu=True)
            mask = self.dropout_mask(i, a, mode.step) if self.any_dropout else None
            if mask is not None:
                a = a * mask
            saved.append((passes, before, after, mask, a, first))
            h = torch.baddbmm(self.b[i + 1][..., None], self.W[i + 1], a)
        return h, saved

    def train_normalise(self, i, h, mode, after_relu):
        """Like `normalise`, keeping per block what its backward needs (None where a block has no layer here)."""
        parts = [(blk, blk.norm.normalises and blk.norm.after_relu == after_relu) for blk in self.blocks]
        if not any(applies for _, applies in parts):
            return h, None
        alone = len(parts) == 1
        kept = []
        for blk, applies in parts:
            if not applies:
                kept.append(None)
                continue
            # with other blocks the result goes back into h's rows, so the input the backward needs is a copy
            layer, x = self.layer(i, blk), (h if alone else h[blk.rows].clone())
            if blk.norm.train is not None:
                out, ctx = blk.norm.train(layer, x, replace_draw(mode, self, blk))
            else:   # no hand-derived backward: differentiate this layer's forward with autograd
                x, w, b = (t.detach().requires_grad_() for t in (x, layer.weight, layer.bias))
                with torch.enable_grad():
                    out = blk.norm.forward(Layer(i, w, b, layer.buffers, layer.flags, layer.arch), x,
                                           replace_draw(mode, self, blk))
                ctx, out = (out, (x, w, b)), out.detach()
            kept.append(ctx)
            if alone:
                return out, kept
            h[blk.rows] = out
        return h, kept

    def norm_backward(self, i, grad, kept, d_gamma, d_beta):
        """Through hidden layer i's normalisations (block by block); their γ and β gradients go into d_gamma[i],
        d_beta[i] ([K, F], zero for models without that layer)."""
        if kept is None:
            return grad
        for blk, ctx in zip(self.blocks, kept):
            if ctx is None:
                continue   # no layer here: the gradient passes unchanged
            g = grad if len(self.blocks) == 1 else grad[blk.rows]
            if blk.norm.backward is not None:
                dx, dw, db = blk.norm.backward(self.layer(i, blk), ctx, g)
            else:
                out, inputs = ctx
                dx, dw, db = torch.autograd.grad(out, inputs, g)
            d_gamma[i][blk.rows], d_beta[i][blk.rows] = dw, db   # copies into the gradient buffers
            if len(self.blocks) == 1:
                return dx
            grad[blk.rows] = dx   # grad is this step's own tensor: overwritten in place, block by block
        return grad

    def backward(self, d_logits, saved, into):
        """Gradients of every layer after the first Linear, given d_logits [K, 10, B], written into `into` (tensors
        shaped as `parameters()[2:]`: each later Linear's weight and bias, then γ and β); returns d_h0 [K, F1, B],
        the gradient at the first Linear's output. Rows of models without a normalisation layer are left alone."""
        L = len(self.hidden)
        d_W, d_b = into[0:2 * L:2], into[1:2 * L:2]
        d_gamma, d_beta = into[2 * L:2 * L + len(self.gamma)], into[2 * L + len(self.gamma):]
        g = d_logits
        for i in reversed(range(L)):
            passes, before, after, mask, a, first = saved[i]
            torch.bmm(g, a.transpose(1, 2), out=d_W[i])
            torch.sum(g, 2, out=d_b[i])
            g = torch.bmm(self.W[i + 1].transpose(1, 2), g)
            if mask is not None:
                g = g * mask
            g = self.norm_backward(i, g, after, d_gamma, d_beta)
            g = torch.ops.aten.threshold_backward(g, passes, 0)   # the ReLU passes the gradient where it was > 0
            g = self.norm_backward(i, g, before, d_gamma, d_beta)
            if first is not None:
                g = g * first
        return g

    # -----------------------------------------------------------------------------------------------------------
    # Copies, modules, precise statistics

    def snapshot(self, rows=None):
        """A copy of models `rows` (stack positions; default all) as they are now, with tensors of their own: a
        checkpoint to probe later (it keeps each run's settings and has no optimiser)."""
        rows = list(range(self.K)) if rows is None else list(rows)
        pick = torch.tensor(rows, device=self.device)
        part = copy.copy(self)
        given = [self.order_of_runs[r] for r in rows]   # keep the runs' relative order as they were given
        part.runs, part.K = [self.runs[r] for r in rows], len(rows)
        part.order_of_runs = [int(i) for i in np.argsort(np.argsort(given))]
        part.W = [W.detach()[pick].clone() for W in self.W]
        part.b = [b.detach()[pick].clone() for b in self.b]
        part.gamma = [g.detach()[pick].clone() for g in self.gamma]
        part.beta = [b.detach()[pick].clone() for b in self.beta]
        part.blocks, start = [], 0
        for blk in self.blocks:
            mine = [r - blk.start for r in rows if blk.start <= r < blk.stop]
            if not mine:
                continue
            index = torch.tensor(mine, device=self.device)
            part.blocks.append(Block(blk.arch, start, start + len(mine),
                                     [{n: t[index].clone() for n, t in bufs.items()} for bufs in blk.buffers],
                                     [dict(f) for f in blk.flags]))
            start += len(mine)
        if [r for blk in self.blocks for r in range(blk.start, blk.stop) if r in rows] != rows:
            raise ValueError("a snapshot keeps the stack order: give rows increasing")
        part.normalised = any(blk.norm.normalises for blk in part.blocks)
        if not part.normalised:   # rows of models without normalisation carry no γ and β of their own
            part.gamma, part.beta = [], []
        part._per_run_settings()
        return part

    def with_norm(self, norm, gamma, beta):
        """These Linears under the normalisation named `norm` (every model), with γ and β given ([K, F] per layer)
        and fresh running buffers: e.g. the BatchNorm network that computes what this one computes on a batch."""
        runs = [replace(r, arch=replace(r.arch, norm=norm)) for r in self.runs]
        other = StackedMLP(runs, self.device, self.dtype, self.input_stats)
        other.order_of_runs = list(self.order_of_runs)
        other.W, other.b = [W.detach().clone() for W in self.W], [b.detach().clone() for b in self.b]
        other.gamma, other.beta = [g.clone() for g in gamma], [b.clone() for b in beta]
        return other

    def to_modules(self):
        """The K models as plain MLP modules (in the order of the runs given), e.g. to probe one of them."""
        models = []
        for k, run in enumerate(self.runs):
            model = model_of(run, self.device)[0].to(self.dtype)
            blk = next(b for b in self.blocks if b.start <= k < b.stop)
            with torch.no_grad():
                for j, layer in enumerate(linear_layers(model)):
                    layer.weight.copy_(self.W[j][k]), layer.bias.copy_(self.b[j][k])
                for i, layer in enumerate(norm_layers(model)):
                    layer.weight.copy_(self.gamma[i][k]), layer.bias.copy_(self.beta[i][k])
                    for name, stacked in blk.buffers[i].items():
                        getattr(layer, name).copy_(stacked[k - blk.start])
                    if hasattr(layer, "num_batches_tracked"):
                        layer.num_batches_tracked.fill_(self.steps_taken)
            models.append(model)
        return [models[self.order_of_runs.index(i)] for i in range(self.K)]

    def precise_bn(self, X, batch_size=64, progress=None):
        """Precise BatchNorm (Wu & Johnson, 2021; fvcore's update_bn_stats): with the weights frozen, replace the running
        statistics by the plain average, over batches of X, of the batch means and unbiased batch variances."""
        if not all(blk.norm.precise for blk in self.blocks):
            raise ValueError("precise BatchNorm is defined here for models with BatchNorm's running statistics")
        batches = X.split(batch_size)
        with torch.no_grad(), bar(progress, len(batches), unit="batch", units="batches", record=progress and f"{progress}: "
                                  f"{len(batches)} batches of {self.K} models") as meter:
            for j, xb in enumerate(batches):
                # after batch j the running value is the mean of batches 0..j
                self.hidden_and_output(self.first_layer(xb), Mode(True, momentum=1 / (j + 1)))
                if meter is not None:
                    meter.update()


def replace_draw(mode, stack, block):
    """The mode a block's normalisation sees: its models' counter-based draws."""
    return Mode(mode.training, mode.step, mode.momentum, stack.draws(block.rows))
