"""The claims registry (bnstudy/claims.py): complete, consistent with the quoted sources, and identified by its blob."""
import re
import shutil
import subprocess

import pytest

from bnstudy import claims
from bnstudy.notebook import REPO
from bnstudy.stats import Contrast


def folded(text):
    return re.sub(r"\s+", " ", text)


def test_every_claim_is_complete():
    """A statement, a citation, the source's regime, a regime of the study, one primary contrast with the reason for
    its margin, and at least one sensitivity condition in a known regime (or the one it registers and cut, named in
    CUT_CONDITIONS); claims are not repeated."""
    assert len({c.claim for c in claims.CLAIMS}) == len(claims.CLAIMS)
    for c in claims.CLAIMS:
        assert c.statement and c.source and c.source_regime and c.regime in claims.REGIMES, c.claim
        assert isinstance(c.primary, Contrast) and c.primary.why, c.claim
        assert c.sensitivity or c.claim in claims.CUT_CONDITIONS, f"{c.claim}: every row carries its sensitivity rows"
        for condition in c.sensitivity:
            assert condition.regime in claims.REGIMES and condition.name and condition.differs, (c.claim, condition)
        assert len({s.name for s in c.sensitivity}) == len(c.sensitivity), c.claim


def test_every_verbatim_statement_is_in_the_sources_as_quoted():
    """A statement marked verbatim is, fragment by fragment (split at [...]), a quote in docs/sources.md; a
    paraphrase is marked as one."""
    sources = folded((REPO / "docs" / "sources.md").read_text(encoding="utf-8"))
    for c in claims.CLAIMS:
        if c.verbatim:
            for fragment in folded(c.statement).split("[...]"):
                assert fragment.strip(" :.") in sources, (c.claim, fragment)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_registry_blob_is_gits():
    path = REPO / "bnstudy" / "claims.py"
    git = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True, cwd=REPO)
    if git.returncode != 0:
        pytest.skip("not a git checkout")
    assert claims.registry_blob() == git.stdout.strip()
