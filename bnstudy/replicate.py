"""Replicate the study at other SEEDs: run the notebook headless at each, keep each run's summary, and collect every
SEED's verdicts with the full lists of the seeds it used.

    .venv/bin/python -m bnstudy.replicate 101 102 103 104   # each SEED: one run of the whole notebook, in turn
    .venv/bin/python -m bnstudy.replicate                   # only collect (after the committed run)

Each run's `study_summary.json` is kept as `results/by_seed/SEED.json` (the committed run's too), and
`results/verdicts_by_seed.json` holds, per SEED, its `reporting_seeds`, `tuning_seeds` and `verdicts`. Runs go one
after another: two torch processes on a small machine slow each other several-fold.
"""
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .notebook import NOTEBOOK, REPO, parameters_cell

RESULTS = REPO / "results"
BY_SEED = RESULTS / "by_seed"


def run_at(seed, timeout=3600):
    """Execute the notebook at SEED into a scratch folder; every cell must pass. Returns the run's summary path."""
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(NOTEBOOK, as_version=4)
    scratch = Path(tempfile.mkdtemp(prefix=f"bn_seed_{seed}_"))
    parameters_cell(nb).source += f"\nSEED = {seed!r}\nRESULTS_DIR = {str(scratch)!r}"
    start = time.time()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()   # raises on a failing cell
    print(f"SEED {seed}: every cell passed in {time.time() - start:.0f} s", flush=True)
    BY_SEED.mkdir(parents=True, exist_ok=True)
    target = BY_SEED / f"{seed}.json"
    shutil.copyfile(scratch / "study_summary.json", target)
    shutil.rmtree(scratch)
    return target


def seed_record(summary):
    """What verdicts_by_seed.json keeps of one run: its seed lists and each row's verdict."""
    s = summary["summary"]
    return {"reporting_seeds": s["seeds"]["reporting_seeds"], "tuning_seeds": s["seeds"]["tuning_seeds"],
            "verdicts": [{"claim": v["claim"], "verdict": v["outcome"], "estimate": v["estimate [95 % CI]"],
                          "reads": v["reads"], "replication_probability": v["replication_probability"]}
                         for v in s["verdicts"]]}


def collect():
    """results/verdicts_by_seed.json from the committed run (first) and every results/by_seed/SEED.json."""
    committed = json.loads((RESULTS / "study_summary.json").read_text())
    BY_SEED.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(RESULTS / "study_summary.json", BY_SEED / f"{committed['config']['seed']}.json")
    runs = {committed["config"]["seed"]: committed}
    for path in sorted(BY_SEED.glob("*.json"), key=lambda p: int(p.stem)):
        if int(path.stem) not in runs:   # the committed run's copy is already read
            runs[int(path.stem)] = json.loads(path.read_text())
    table = {str(seed): seed_record(summary) for seed, summary in runs.items()}
    (RESULTS / "verdicts_by_seed.json").write_text(json.dumps(table, indent=1, ensure_ascii=False) + "\n")
    return table


if __name__ == "__main__":
    for seed in map(int, sys.argv[1:]):
        run_at(seed)
    table = collect()
    print(f"verdicts of {len(table)} SEEDs: {', '.join(table)}")
