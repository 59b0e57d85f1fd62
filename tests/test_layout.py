"""docs/architecture.md and the README's layout table name every module of the project."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("riad_tf", "edge", "scripts", "experiments")


def _modules() -> list[Path]:
    return sorted(p.relative_to(REPO) for f in FOLDERS for p in (REPO / f).rglob("*.py") if p.name != "__init__.py")


def _readme_layout() -> str:
    text = (REPO / "README.md").read_text()
    return text[text.index("## Layout") :]


def _named(module: Path, text: str) -> bool:
    """Named by its path, or by its file name in backticks (as `name.py`)."""
    return f"`{module}`" in text or f"`{module.name}`" in text


@pytest.mark.parametrize("doc", ["docs/architecture.md", "README.md"])
def test_every_module_is_in_the_layout_docs(doc):
    text = (REPO / doc).read_text() if doc != "README.md" else _readme_layout()
    modules = _modules()
    assert len(modules) > 80, "the walk found the modules"
    missing = [str(m) for m in modules if not _named(m, text)]
    assert not missing, f"{doc} does not name: {', '.join(missing)}"


def test_a_module_left_out_is_caught():
    assert not _named(Path("edge/new_module.py"), _readme_layout())
    assert _named(Path("edge/inspection.py"), _readme_layout())
