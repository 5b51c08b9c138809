"""Text progress bars for long passes, that leave nothing in a saved notebook.

A bar is tqdm's text bar on standard output, updated in place with carriage returns while it runs (no widget, so no
widget state in the notebook). When it ends it is replaced by one plain line saying what ran; nbconvert's
CoalesceStreamsPreprocessor (the README's run command) then drops every update, because each one is overwritten by
the text after it, and the saved output holds that line alone.
"""
import sys
from contextlib import contextmanager

from tqdm.std import tqdm


@contextmanager
def bar(description, total, unit="step", record=None, units=None):
    """A bar of `total` units while the block runs; then `record` (default: the description) as one line. With
    description None, no bar and no line: a silent pass (the tests and the benchmark train this way). `units`: the
    plural, where adding an s is wrong."""
    if description is None:
        yield None
        return
    progress = tqdm(total=total, desc=description, unit=unit, file=sys.stdout, leave=False, mininterval=0.5,
                    ncols=110, ascii=" =", bar_format="{desc}: {percentage:3.0f}% |{bar}| {n_fmt}/{total_fmt} "
                                                      f"{units or unit + 's'} [{{elapsed}}<{{remaining}}, {{rate_fmt}}]")
    try:
        yield progress
    finally:
        progress.close()
    sys.stdout.write(f"\r{record or description}\n")   # the \r makes the last bar update one that text overwrites
    sys.stdout.flush()
