"""The code of README.md and docs/ runs as written (with shorter budgets); no link leaves the repository."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def _runnable_blocks() -> list[str]:
    text = "\n".join(page.read_text() for page in PAGES)
    return [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "import ppdgm" in b]


def test_readme_sbn_example_runs():
    block = next(b for b in _runnable_blocks() if "SigmoidBeliefNet" in b)
    short = block.replace("epochs=30", "epochs=1").replace("num_samples=1000", "num_samples=10")
    exec(compile(short, str(README), "exec"), {})


def test_readme_example_runs():
    block = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    assert 'method="iwae"' in block
    short = block.replace("epochs=50", "epochs=2").replace("num_samples=5000", "num_samples=20")
    short = short.replace("seed=0)", "seed=0, progress=False)")
    namespace: dict = {}
    exec(compile(short, str(README), "exec"), namespace)
    assert namespace["run"].history[-1]["epoch"] == 2


def test_readme_comparison_spec_is_valid():
    import tomllib

    from ppdgm.compare import parse_spec

    block = re.findall(r"```toml\n(.*?)```", (ROOT / "docs" / "comparisons.md").read_text(), re.S)[0]
    spec = parse_spec(tomllib.loads(block))
    assert [m.label for m in spec.methods] == ["vae", "iwae k=5"] and spec.seeds == (0, 1, 2)


def test_readme_gan_example_runs():
    block = next(b for b in _runnable_blocks() if 'method="gan"' in b)
    short = block.replace("steps=6000", "steps=30").replace("seed=0)", "seed=0, progress=False)")
    namespace: dict = {}
    exec(compile(short, str(README), "exec"), namespace)
    assert namespace["run"].history[-1]["step"] == 30 and namespace["samples"].shape == (2000, 2)


def test_readme_conditional_and_semi_supervised_examples_run():
    block = next(b for b in _runnable_blocks() if "SemiSupervisedVAE" in b)
    short = block.replace("epochs=100", "epochs=1").replace("steps=2000", "steps=5")
    short = short.replace("seed=0)", "seed=0, progress=False)")
    namespace: dict = {}
    exec(compile(short, str(README), "exec"), namespace)
    assert namespace["sevens"].shape == (8, 64) and 0.0 <= float(namespace["accuracy"]) <= 1.0


def test_every_relative_link_of_the_documentation_resolves_inside_the_repository():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            resolved = (page.parent / target).resolve()
            assert resolved.is_relative_to(ROOT), f"{page.name} links outside the repository: {target}"
            assert resolved.exists(), f"{page.name} links to a missing file: {target}"


def test_readme_is_a_short_front_door():
    assert len(README.read_text().splitlines()) <= 250
