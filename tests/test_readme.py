"""CI runs exactly the README's two set-up commands."""

from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_ci_runs_the_readme_commands():
    readme = ROOT / "README.md"
    ci = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.startswith("pip install")
    ]
    assert len(ci) == 2
    block = readme.read_text().split("```bash", 1)[1].split("```", 1)[0]
    assert [line for line in block.splitlines() if line.strip()] == ci
