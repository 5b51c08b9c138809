"""The README's test command is the one both CI paths run, character for character."""
import re

from bnstudy.notebook import REPO


def readme_commands():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", quickstart)


def test_readme_has_exactly_two_setup_commands():
    run, test = readme_commands()
    assert "nbconvert" in run and "--execute" in run and "pip install -r requirements.txt" in run
    assert "pytest" in test and "--nbval" in test and "pip install -r requirements.txt" in test


def test_ci_scripts_run_the_readme_test_command():
    test = readme_commands()[1]
    assert test in (REPO / ".ci" / "run").read_text().splitlines()
    workflow = (REPO / ".github" / "workflows" / "tests.yml").read_text()
    assert f"run: {test}" in workflow
