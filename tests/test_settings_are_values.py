"""Every setting is a value: change the reference lr (and shrink everything else) and the notebook runs through,
labelling the new lr wherever it used to say 0.001."""
import json
import re

import pytest

from study_notebook import errors_of, execute_with

TINY = {  # a configuration that trains in under a minute on 2 cores; its findings need not hold
    "SEED": 3, "LR": 0.01, "EPOCHS": 2, "TUNING_SEEDS": 2, "FIRST_SEEDS": 2, "MAX_SEEDS": 3, "VAL_SIZE": 50_000,
    "PROBE_SIZE": 500, "GRID": [0.01, 0.1, 1.0], "GRID_LIMITS": [0.003, 3.0], "FINALISTS": 2,
    "EDGE_BRACKET": [0.1, 10.0], "EDGE_FACTOR": 3.0, "CURVE_POINTS": 4, "CHECKPOINT_EPOCHS": [1], "DEPTHS": [2, 3],
    "TEST_BATCH_SIZES": [1, 4, 64, 10000], "LANDSCAPE_SIZE": 200, "HESSIAN_ITERATIONS": 4, "ACTIVATION_IMAGES": 200,
    "BATCHES": [16, 64, 128], "SUBSET": 1024, "BATCH_GRID": [0.001, 0.01, 0.1, 1.0], "SCREEN_RATES": 3,
    "SMALL_MAX_SEEDS": 3, "OVERFIT_SIZE": 512, "OVERFIT_EPOCHS": 3, "OVERFIT_VAL": 300, "WIDE": [128, 64],
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The notebook executed with TINY settings. Cells go on after an error, so that every cell's labels are seen;
    the errors are left for the tests to judge."""
    results = tmp_path_factory.mktemp("tiny") / "results"
    return execute_with(TINY, results, stop_at_error=False), results


def outputs_text(nb):
    """Everything the run printed or displayed as text or Markdown."""
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts += [output.get("data", {}).get(kind, "") for kind in ("text/markdown", "text/plain")]
    return "\n".join(parts)


def test_a_tiny_run_passes_every_cell(tiny_run):
    """A tiny run trains too little for its verdicts to mean much, but findings are results, not asserts: no cell may
    break on a changed setting, whatever the verdicts, and the checks of the machinery (cells tagged `check`:
    from-scratch BatchNorm, the engine, the twin) must pass."""
    errors = errors_of(tiny_run[0])
    assert not errors, [(e["ename"], e["evalue"]) for e in errors]
    checks = [c for c in tiny_run[0].cells if "check" in c.metadata.get("tags", [])]
    assert len(checks) == 3 and not [e for c in checks for e in errors_of({"cells": [c]})]


def test_the_reference_lr_is_labelled_by_its_value(tiny_run):
    text = outputs_text(tiny_run[0])
    assert not re.search(r"lr 0\.001\b", text), re.findall(r".{60}lr 0\.001.{20}", text)[:3]
    assert "at lr 0.01" in text and "the best scale control at lr 0.01" in text


def test_the_tiny_run_went_to_the_end(tiny_run):
    """The last cells ran and wrote the summary of this configuration, not of the committed one."""
    summary = json.loads((tiny_run[1] / "study_summary.json").read_text())
    assert summary["config"]["lr"] == 0.01 and summary["config"]["seed"] == 3
    registry_text = ("statement", "source_regime", "seen_before", "disagreement", "regime")   # the sources' words
    measured = [{k: x for k, x in v.items() if k not in registry_text} for v in summary["summary"]["verdicts"]]
    assert not [v["claim"] for v in measured if "lr 0.001" in json.dumps(v, ensure_ascii=False)]
