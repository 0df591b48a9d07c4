"""The repository stands on its own: no tracked file points outside it, and every citation of the
mathematics (the file docs/maths.md, then ``§label``) names a section that exists.

A reader of a clone has the repository and nothing else, so a path into a developer's machine or a
document kept elsewhere is a citation they cannot follow. Checked over every tracked text file (code,
docs, configs, tests, committed outputs).
"""

from __future__ import annotations

import importlib
import re
import subprocess
from pathlib import Path

import pytest

from preftune import losses

ROOT = Path(__file__).resolve().parents[1]
MATHS = ROOT / "docs" / "maths.md"

# Spelled in pieces so that this file does not match its own patterns.
OUTSIDE = {
    "a sibling folder of the repository": re.compile(r"\.\./" + "shared"),
    "the unpublished specification": re.compile(r"\bSPEC" + r"(\.md|\s*§)"),
    "the unpublished design notes": re.compile(r"\bDESIGN" + r"\.md"),
    "a path on a developer's machine": re.compile(r"(?<![\w.~])/(" + "work|home|root|Users" + r")/"),
}
LABEL = r"§([\w.\-]*\w)"
# The file name followed by one label or a comma-separated list of them: every label is checked.
# The CI harness's script describes the machine CI runs on; it is not read as part of the project.
NOT_PROJECT = (".ci/",)
CITATION = re.compile(r"docs/maths\.md((?:,?\s*§[\w.\-]*\w)+)")
SECTION = re.compile(r"^#+\s*" + LABEL, re.MULTILINE)
# Sphinx-style cross-references by full name, e.g. :func:`preftune.rl.kl.kl_penalty` (the ~ form too).
REFERENCE = re.compile(r":(?:func|class|mod|data|meth|attr|obj|exc):`~?(preftune(?:\.\w+)+)`")


def cited_labels(text: str) -> list[tuple[int, str]]:
    """(offset, label) of every section a text cites."""
    return [(m.start(), label) for m in CITATION.finditer(text) for label in re.findall(LABEL, m.group(1))]


def tracked_text_files() -> dict[str, str]:
    """path → text of every file git tracks that decodes as UTF-8 (binaries are skipped)."""
    try:
        listing = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    files = {}
    for name in listing.decode().split("\0"):
        path = ROOT / name
        if not name or name.startswith(NOT_PROJECT) or not path.is_file():
            continue
        try:
            files[name] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
    return files


def maths_sections() -> set[str]:
    return set(SECTION.findall(MATHS.read_text(encoding="utf-8")))


def test_no_tracked_file_points_outside_the_repository():
    problems = []
    for name, text in tracked_text_files().items():
        for what, pattern in OUTSIDE.items():
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                problems.append(f"{name}:{line}: {what} ({match.group(0)!r})")
    assert not problems, "references outside the repository:\n" + "\n".join(problems)


def test_every_maths_citation_names_an_existing_section():
    sections = maths_sections()
    problems = []
    for name, text in tracked_text_files().items():
        for offset, label in cited_labels(text):
            if label not in sections:
                line = text.count("\n", 0, offset) + 1
                problems.append(f"{name}:{line}: docs/maths.md §{label} does not exist")
    assert not problems, "\n".join(problems) + f"\nsections: {', '.join(sorted(sections))}"


def test_the_code_cites_the_maths():
    # Guards against the citation check passing vacuously (a renamed file or a broken pattern).
    cited = {label for text in tracked_text_files().values() for _, label in cited_labels(text)}
    assert {"objective", "dpo.gradient", "preference.bt", "rlhf.rm", "rl.kl-estimators"} <= cited


def resolves(dotted: str) -> bool:
    """Whether ``preftune.a.b.name`` names a module or an attribute reachable from one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if hasattr(obj, name):
                obj = getattr(obj, name)
                continue
            try:
                obj = importlib.import_module(f"{obj.__name__}.{name}")
            except (ImportError, AttributeError):
                return False
        return True
    return False


def test_every_full_name_in_a_docstring_exists():
    # A renamed or moved function leaves its old name behind in prose; a reader following it finds nothing.
    stale = [f"{name}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(1)}"
             for name, text in tracked_text_files().items() if name.endswith((".py", ".md"))
             for m in REFERENCE.finditer(text) if not resolves(m.group(1))]
    assert not stale, "references to names that do not exist:\n" + "\n".join(stale)


def test_every_registered_loss_has_its_section():
    sections = maths_sections()
    missing = [name for name in losses.all_names() if f"loss.{name}" not in sections]
    assert not missing, f"docs/maths.md has no §loss.<name> section for: {', '.join(missing)}"


def test_section_labels_are_unique():
    labels = SECTION.findall(MATHS.read_text(encoding="utf-8"))
    assert len(labels) == len(set(labels))
