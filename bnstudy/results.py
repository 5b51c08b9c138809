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
from .stats import (DECIDED, Contrast, ImageSampling, at_other_margins, decide, replication_probability, signed,
                    robustness)


PUBLISHED = {  # the tutorial's single runs, test accuracy (%) after each epoch (Raminyazdani/neural-network-training-techniques)
    "baseline": [20.43, 31.87, 42.40, 45.02, 56.32],
    "batchnorm": [71.55, 76.19, 78.14, 79.43, 80.56],
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


VERDICT_COLUMNS = ("claim", "where it comes from", "regime", "primary contrast", "margin", "verdict",
                   "estimate [95 % CI]", "reads", "sensitivity verdicts", "same verdict from another seed set",
                   "other numbers (descriptive)", "section")


def _decision_row(d):
    """What a Decision keeps in the results JSON: enough to decide it again."""
    return {"outcome": d.outcome, "estimate": d.estimate, "ci95": [d.low, d.high], "seeds": d.n,
            "text": d.text(), "contrast": dataclasses.asdict(d.contrast), "values": list(d.values),
            "images": dataclasses.asdict(d.images) if d.images is not None else None}


def redecide(row):
    """The Decision a verdict row (or one of its sensitivity rows) of the results JSON was decided as, decided again
    from the values it keeps: what a reader, or a test, re-derives from the file alone."""
    images = ImageSampling(**row["images"]) if row.get("images") else None
    return decide(row["values"], Contrast(**row["contrast"]), images=images)


def record_claim(verdicts, claim, primary, sensitivity=None, other="", section=("", "")):
    """Decide one row of the registry (a `bnstudy.claims.Claim`) and show it where it was decided, with its finding.

    `primary` is the Decision of the claim's primary contrast; `sensitivity` {condition: Decision}, every other
    condition run for it, decided by the same rule. The row reads robust or depends on (`stats.robustness`), shows
    the predictive probability that another seed set reaches the same verdict, and its verdict at half and twice
    the margin (descriptive). `other` holds descriptive numbers, which decide nothing. Returns the finding."""
    sensitivity = sensitivity or {}
    number, anchor = section
    c = primary.contrast
    robust = robustness(primary, sensitivity)
    replication = replication_probability(primary)
    margins = at_other_margins(primary)   # a zero-width CI needs a finer measurement at any margin
    claimed = ("above " if c.direction > 0 else "below ") + ("1×" if c.ratio else "0")
    verdict = primary.outcome + (" (the test images' sampling alone spans the margin edge: more seeds cannot settle "
                                 "it)" if primary.outcome == "not resolved" and primary.seeds_needed >= 10 ** 6 else "")
    others = "; ".join(f"{name}: {d.outcome}, {d.text()}" for name, d in sensitivity.items()) or "none run"
    columns = (claim.claim, claim.source, claim.regime, f"{c.what}; the claim predicts {claimed}",
               f"{primary.margin_text}: {c.why}", verdict, primary.text(), robust.text(), others,
               f"{100 * replication:.0f} %", other, number)
    text = finding(claim.claim, primary, robust, sensitivity)
    verdicts[claim.claim] = {**dict(zip(VERDICT_COLUMNS, columns)), "key": claim.key, "anchor": anchor,
                             **_decision_row(primary), "estimate, short": primary.text(short=True),
                             "seeds needed": primary.seeds_needed, "reads_as": robust.reads, "depends_on": list(robust.on),
                             "replication_probability": replication,
                             "at_half_margin": margins[0.5], "at_twice_margin": margins[2.0],
                             "sensitivity": [{"condition": name, **_decision_row(d)} for name, d in sensitivity.items()],
                             "statement": claim.statement, "verbatim": claim.verbatim,
                             "source_regime": claim.source_regime, "seen_before": claim.seen_before,
                             "disagreement": claim.disagreement, "finding": text}
    display(Markdown(f"**Verdict: {verdict}**, {robust.text()}; another seed set gives the same verdict with "
                     f"probability {100 * replication:.0f} % (predictive simulation). {c.what}, where the claim "
                     f"predicts {claimed}: {primary.text()} "
                     f"(margin {primary.margin_text}); at half and twice the margin: {margins[0.5]}, "
                     f"{margins[2.0]}." + "".join(f"\n- *{name}:* {d.outcome}, {d.text()}"
                                                  for name, d in sensitivity.items())
                     + (f"\n\n*Descriptive:* {other}" if other else "")
                     + (f"\n\n*Where the source's regime differs:* {claim.disagreement}" if claim.disagreement else "")))
    display(Markdown(f"**Finding.** {text}"))
    return text


WHY = {  # what each outcome says about the CI, in the words of the decision rule
    "holds": "its 95 % CI lies beyond the {margin} margin in the direction the claim predicts",
    "no effect that matters": "its 95 % CI lies within ± {margin}",
    "the opposite holds": "its 95 % CI lies beyond the {margin} margin against the direction the claim predicts",
    "not resolved": "its 95 % CI crosses an edge of the ± {margin} margin",
    "needs a finer measurement": "every seed gave the same value, so its CI has zero width and decides nothing",
}


def finding(claim, decision, robust=None, sensitivity=None):
    """The finding of one row as one sentence, generated from its decision (never written by hand).

    `robust` is a `bnstudy.stats.Robustness` and `sensitivity` the {condition: Decision} it was computed from; a
    row that depends on a condition names it with its outcome and estimate."""
    c = decision.contrast
    sentence = (f"{claim}: *{decision.outcome}* here. Estimate {decision.text()} ({c.what}): "
                + WHY[decision.outcome].format(margin=decision.margin_text))
    if decision.outcome == "not resolved" and decision.seeds_needed < 10 ** 6:
        sentence += f" (the power rule asks for about {decision.seeds_needed:,} seeds)"
    if robust is not None and robust.on:
        sentence += "; the verdict depends on " + "; ".join(
            f"{name}, where it reads *{sensitivity[name].outcome}* ({sensitivity[name].text()})" for name in robust.on)
    elif robust is not None and robust.reads == "robust":
        sentence += f"; {robust.text()}: no other condition run for it ({', '.join(sensitivity)}) decides otherwise"
    elif robust is not None and robust.conditions == 0:
        sentence += "; no other condition was run for it"
    elif robust is not None and robust.reads == "no condition decided":
        sentence += f"; none of the other conditions run for it ({', '.join(sensitivity)}) was decided"
    return sentence + "."


def other_conditions(v):
    """The compact table's word on a row's other conditions: robust or depends on; where the primary was not
    decided, the verdicts its decided conditions reached (so that they are not hidden)."""
    if v["reads_as"] != "primary not decided":
        return v["reads"]
    decided = [f"{s['condition']}: {s['outcome']}" for s in v["sensitivity"] if s["outcome"] in DECIDED]
    return "primary not decided; " + ("; ".join(decided) if decided else "no other condition decided either")


def compact_row(v, link="#"):
    """One row of the compact verdict table (claim, verdict, estimate, robust or depends on, replication, section)."""
    return [v["claim"], v["outcome"], v["estimate, short"], other_conditions(v),
            f"{100 * v['replication_probability']:.0f} %", f"[{v['section']}]({link}{v['anchor']})"]


COMPACT_COLUMNS = ["claim", "verdict", "primary: estimate [95 % CI]", "other conditions", "same verdict again",
                   "section"]


def verdict_tables(verdicts):
    """The compact table (claim, verdict, primary estimate, robustness, replication, link) and the full one (every
    column), as Markdown."""
    compact = markdown_table(COMPACT_COLUMNS, [compact_row(v) for v in verdicts.values()])
    full = markdown_table(VERDICT_COLUMNS, [[v[c] for c in VERDICT_COLUMNS] for v in verdicts.values()])
    return compact, full


def decision_figure(rows, xlabel, title, margin, ratio=False, linthresh=None):
    """Decided contrasts as points with their 95 % CIs, one row each ({label: Decision}), against the line of no
    effect and the band of ± the margin (on a log axis for ratios): the point of a comparison at a glance.
    `linthresh`: a symmetric log axis, linear within ± linthresh, so that one large difference does not squeeze
    the small ones into the margin band."""
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(rows) + 1.6))
    for i, d in enumerate(rows.values()):
        ax.errorbar(d.estimate, i, xerr=[[d.estimate - d.low], [d.high - d.estimate]], fmt="o", ms=7, capsize=5,
                    color="black")
        ax.annotate(f"{d.estimate:.2g}×" if ratio else signed(d.estimate), (d.estimate, i), xytext=(0, 7),
                    textcoords="offset points", ha="center", fontsize=8)
    no_effect = 1.0 if ratio else 0.0
    ax.axvline(no_effect, color="gray", lw=0.8)
    band = (1 / margin, margin) if ratio else (-margin, margin)
    ax.axvspan(*band, color="gray", alpha=0.15, label=f"within the margin (± {margin:g}" + ("×)" if ratio else
                                                                                          f" point{'s' * (margin != 1)})"))
    if ratio:
        ax.set_xscale("log")
    elif linthresh:
        ax.set_xscale("symlog", linthresh=linthresh)
        lo, hi = min(d.low for d in rows.values()), max(d.high for d in rows.values())
        ax.set_xticks([t for t in (-50, -20, -10, -5, -2, -1, 0, 1, 2, 5, 10, 20, 50) if lo - 1 <= t <= hi + 1])
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:+g}" if v else "0"))
        ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set_yticks(range(len(rows)), list(rows), fontsize=9)
    ax.set_ylim(len(rows) - 0.5, -0.8)
    ax.set(xlabel=xlabel, title=title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    return fig
