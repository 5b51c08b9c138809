"""What the study shows and keeps: the published runs, colours, figures, JSON files, tables and the verdict rows."""
import dataclasses
import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import PIL.Image
from IPython.display import Image, Markdown, display

from .norms import NORMS


PUBLISHED = {  # the tutorial's single runs, test accuracy (%) after each epoch (Raminyazdani/neural-network-training-techniques)
    "baseline": [20.4, 31.9, 42.4, 45.0, 56.3],
    "batchnorm": [71.6, 76.2, 78.1, 79.4, 80.6],
}
SECOND_PUBLISHED = {"baseline": {1: 22.8, 5: 57.2}, "batchnorm": {1: 73.8, 5: 82.1}}  # the course version: epochs 1, 5


def style(norm, label=None):
    """A line's colour and label from the registry entry of a normalisation (label: another name, e.g. baseline)."""
    return dict(color=NORMS[norm].color, label=label or NORMS[norm].label)


STYLE = {"baseline": style("none", "baseline"), "batchnorm": style("batchnorm"),   # the tutorial's two models
         "layernorm": style("layernorm")}


def value_ticks(ax, values, rotation=0):
    """x ticks at the values a sweep used, labelled by them, and no minor ticks between them (on a log axis too)."""
    ax.set_xticks(values, [f"{v:,g}" for v in values], rotation=rotation)
    ax.xaxis.set_minor_locator(plt.NullLocator())


def margin_lines(ax, margin, axis="x"):
    """A paired difference's reference lines: 0, and dotted at ± the margin, across the x (or y) axis."""
    line = ax.axvline if axis == "x" else ax.axhline
    line(0, color="gray", lw=0.8)
    for edge in (-margin, margin):
        line(edge, color="gray", ls=":", lw=1)


def paired_lines(before, after, labels, ylabel, title):
    """One line per seed from `before` to `after` (paired values, log scale): a figure for a ratio at one point."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for pair in zip(before, after):
        ax.plot([0, 1], pair, "o-", color="gray", alpha=0.6)
    ax.set_xticks([0, 1], labels)
    ax.set_xlim(-0.4, 1.4)
    ax.set(yscale="log", ylabel=ylabel, title=title)
    fig.tight_layout()
    return fig


def save_figure(fig, directory, name, show=True):
    """Save a figure as directory/<name>.png, of modest size for the README, and show that PNG: one rendering.

    Returns the PNG as an IPython Image (to show it elsewhere too), or nothing when shown, so that a cell that
    ends here prints no path."""
    path = Path(directory) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    PIL.Image.open(path).convert("RGB").save(path, optimize=True)  # opaque on white anyway: RGB is a smaller file
    if not show:
        return Image(filename=path)
    display(Image(filename=path))


def save_json(payload, directory, name):
    """Write `payload` to directory/<name>.json in one step, so a failed run never leaves half a file."""
    path = Path(directory) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)
    return path


def to_json(tree):
    """Nested dicts of arrays and numbers as plain JSON, without wall-clock seconds (they differ between runs)."""
    if isinstance(tree, dict):
        return {str(key): to_json(value) for key, value in tree.items() if key != "seconds"}
    if isinstance(tree, (list, tuple)):
        return [to_json(value) for value in tree]
    if isinstance(tree, (np.ndarray, np.generic)):
        return to_json(tree.tolist())
    return None if isinstance(tree, float) and not math.isfinite(tree) else tree  # JSON has no NaN


def markdown_table(header, rows):
    """A Markdown table (renders on GitHub and in Jupyter)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return Markdown("\n".join(lines))


VERDICT_COLUMNS = ("claim", "where it comes from", "experiment", "primary contrast", "margin", "verdict",
                   "estimate [95 % CI]", "other numbers (descriptive)", "section")


def record_verdict(verdicts, claim, source, experiment, decision, other, section, stated=None):
    """Add one row to the verdict table from a `bnstudy.stats.decide` Decision, and show it where it was decided.

    The verdict is the decision's outcome and nothing else; `other` holds descriptive numbers, which decide
    nothing. `section` is (number, anchor id). `stated` is the outcome that the prose finding below the cell was
    written for: a run with another SEED or other settings may reach another, and then a note says so where the
    reader meets the finding (the verdict is a result, so the notebook does not stop). Returns the outcome.
    """
    number, anchor = section
    c = decision.contrast
    power = ("enough seeds by the power rule" if decision.enough_seeds else
             f"the power rule asks for about {decision.seeds_needed:,} seeds" if decision.seeds_needed < 10 ** 6 else
             "the estimate sits on a margin edge")
    verdict = decision.outcome + (f" ({power})" if decision.outcome == "not resolved" else "")
    claimed = ("above " if c.direction > 0 else "below ") + ("1×" if c.ratio else "0")
    verdicts[claim] = {**dict(zip(VERDICT_COLUMNS, (claim, source, experiment, f"{c.what}; the claim predicts {claimed}",
                                                    f"{decision.margin_text}: {c.why}", verdict, decision.text(),
                                                    other, number))),
                       "anchor": anchor, "outcome": decision.outcome, "seeds": decision.n,
                       "seeds needed": decision.seeds_needed, "estimate": decision.estimate,
                       "estimate, short": decision.text(short=True),
                       "ci95": [decision.low, decision.high], "contrast": dataclasses.asdict(c),
                       "values": list(decision.values),
                       "images": dataclasses.asdict(decision.images) if decision.images is not None else None}
    display(Markdown(f"**Verdict: {verdict}.** {c.what}: {decision.text()} (margin {decision.margin_text}; {power})."
                     + (f" *Descriptive:* {other}" if other else "")))
    verdicts[claim]["finding written for"] = stated
    if stated is not None and stated != decision.outcome:
        display(Markdown(f"**Note: this run's verdict is *{decision.outcome}*. The finding below was written for a "
                         f"run whose verdict was *{stated}*, so it does not describe this run.**"))
    return decision.outcome


WHY = {  # what each outcome says about the CI, in the words of the decision rule
    "holds": "its 95 % CI lies beyond the {margin} margin in the direction the claim predicts",
    "no effect that matters": "its 95 % CI lies within ± {margin}",
    "the opposite holds": "its 95 % CI lies beyond the {margin} margin against the direction the claim predicts",
    "not resolved": "its 95 % CI crosses an edge of the ± {margin} margin",
}


def finding(claim, decision, robust=None, sensitivity=None):
    """The finding of one row as one sentence, generated from its decision (never written by hand).

    `robust` is a `bnstudy.stats.Robustness` and `sensitivity` the {condition: Decision} it was computed from; a
    row that depends on a condition names it with its outcome and estimate."""
    c = decision.contrast
    sentence = (f"{claim}: *{decision.outcome}* here. {c.what} is {decision.text()}, and "
                + WHY[decision.outcome].format(margin=decision.margin_text))
    if decision.outcome == "not resolved" and decision.seeds_needed < 10 ** 6:
        sentence += f" (the power rule asks for about {decision.seeds_needed:,} seeds)"
    if robust is not None and robust.on:
        sentence += "; the verdict depends on " + "; ".join(
            f"{name}, where it reads *{sensitivity[name].outcome}* ({sensitivity[name].text()})" for name in robust.on)
    elif robust is not None and robust.reads == "robust":
        sentence += f"; {robust.text()}: no other condition run for it ({', '.join(sensitivity)}) decides otherwise"
    elif robust is not None and robust.reads == "no condition decided":
        sentence += f"; none of the other conditions run for it ({', '.join(sensitivity)}) was decided"
    return sentence + "."


def verdict_tables(verdicts):
    """The compact table (claim, verdict, primary estimate, link) and the full one (every column), as Markdown."""
    compact = markdown_table(["claim", "verdict", "primary contrast: estimate [95 % CI]", "section"],
                             [[v["claim"], v["outcome"], v["estimate, short"], f"[{v['section']}](#{v['anchor']})"]
                              for v in verdicts.values()])
    full = markdown_table(VERDICT_COLUMNS, [[v[c] for c in VERDICT_COLUMNS] for v in verdicts.values()])
    return compact, full
