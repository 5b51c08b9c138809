"""Stacked optimisers: torch.optim's SGD (momentum, weight decay) and Adam for K models at once, each model with its
own learning rate, momentum and weight decay.

An optimiser updates a list of tensors, each with `expand`, which turns a per-model [K] setting into something that
broadcasts against it: a view for a [K, ...] tensor, a gather for the engine's buffer that holds every small
parameter of every model. Per-model settings are expanded once; a schedule scales every lr by one number per step.

Plain SGD without momentum has a shortcut the engine uses: its gradients arrive already multiplied by each model's
lr (the loss of model k is scaled by lr_k before the backward pass), so a step is one subtraction, and the first
Linear's step is one in-place matrix multiply that never materialises its gradient.
"""
import math

import torch

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults


def per_model(settings, p):
    """A [K] tensor shaped to broadcast against a [K, ...] parameter."""
    return settings.view(-1, *[1] * (p.dim() - 1))


class Optimizer:
    """Each model's lr, momentum and weight decay ([K] tensors), expanded once against every tensor it updates."""
    lr_in_gradients = False

    def __init__(self, params, expand, lr, momentum, weight_decay, any_weight_decay):
        self.params, self.any_weight_decay = params, any_weight_decay   # a Python bool: no device read per step
        self.lr = [e(lr) for e in expand]
        self.momentum = [e(momentum) for e in expand]
        self.weight_decay = [e(weight_decay) for e in expand]
        self.state = [{} for _ in params]

    def lrs(self, factor):
        return self.lr if factor == 1.0 else [lr * factor for lr in self.lr]   # x * 1.0 is x: no op without a schedule


class PlainSGD(Optimizer):
    """SGD without momentum, on gradients that are already lr-scaled steps: p -= step, after weight decay's shrink."""
    lr_in_gradients = True

    def shrink(self, factor):
        """torch's SGD adds weight_decay * w to the gradient: the same as multiplying w by (1 - lr * weight_decay)
        first, which must happen before the first Linear's in-place step."""
        if self.any_weight_decay:
            for p, lr, wd in zip(self.params, self.lrs(factor), self.weight_decay):
                p.mul_(1 - lr * wd)

    def step(self, steps, factor):
        for p, step in zip(self.params, steps):
            if step is not None:
                p.sub_(step)


class SGD(Optimizer):
    """torch.optim.SGD: g += weight_decay * p; buf = momentum * buf + g (buf = g at the first step); p -= lr * buf."""

    def step(self, grads, factor):
        for p, g, lr, mom, wd, state in zip(self.params, grads, self.lrs(factor), self.momentum, self.weight_decay,
                                            self.state):
            if self.any_weight_decay:
                g = g + wd * p
            if "momentum_buffer" not in state:   # allocated once: a default argument would be built every step
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.mul_(mom).add_(g)
            p.sub_(lr * buf)


class Adam(Optimizer):
    """torch.optim.Adam with its default betas and eps, and L2 weight decay added to the gradient as torch does."""

    def step(self, grads, factor):
        (beta1, beta2) = ADAM_BETAS
        for p, g, lr, wd, state in zip(self.params, grads, self.lrs(factor), self.weight_decay, self.state):
            t = state["t"] = state.get("t", 0) + 1
            if self.any_weight_decay:
                g = g + wd * p
            if "exp_avg" not in state:
                state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (v.sqrt() / math.sqrt(1 - beta2 ** t)).add_(ADAM_EPS)
            p.sub_(lr / (1 - beta1 ** t) * m / denom)


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def make_optimizer(name, runs, params, expand, device, dtype):
    """The optimiser `name` for `runs` (in stack order): plain SGD's shortcut wherever no run uses momentum."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}: use one of {tuple(OPTIMIZERS)} (SGD with per-run momentum)")
    column = lambda attr: torch.tensor([getattr(r, attr) for r in runs], dtype=dtype, device=device)  # noqa: E731
    kind = PlainSGD if name == "sgd" and not any(r.momentum for r in runs) else OPTIMIZERS[name]
    return kind(params, expand, column("lr"), column("momentum"), column("weight_decay"),
                any(r.weight_decay for r in runs))
