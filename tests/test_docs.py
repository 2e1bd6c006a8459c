"""References in code and docs point at documents the project ships, and at sections that exist."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = re.compile(r"docs/([\w-]+\.md)((?:\s*(?:§\d+(?:–§\d+)?)(?:,\s*)?)*)")
FOREIGN = re.compile(r"\b(?:SPEC\s*(?:§|Decision|is silent)|STYLE\.md|DESIGN\.md|ENVIRONMENT\.md|shared/fixtures)")


def _tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / n for n in names if n.endswith((".py", ".md", ".yaml", ".sh", ".txt")) and n != "tests/test_docs.py"]


def _sections(doc: Path) -> set[int]:
    return {int(n) for n in re.findall(r"^#+ §(\d+)\b", doc.read_text(encoding="utf-8"), flags=re.MULTILINE)}


def test_every_docs_reference_names_a_shipped_document_and_section():
    broken = []
    for path in _tracked_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in REFERENCE.finditer(text):
            doc = ROOT / "docs" / match.group(1)
            where = f"{path.relative_to(ROOT)}: docs/{match.group(1)}"
            if not doc.is_file():
                broken.append(f"{where} does not exist")
                continue
            have = _sections(doc)
            for first, last in re.findall(r"§(\d+)(?:–§(\d+))?", match.group(2)):
                for n in range(int(first), int(last or first) + 1):
                    if n not in have:
                        broken.append(f"{where} has no §{n}")
    assert not broken, broken


def test_no_reference_to_documents_the_project_does_not_ship():
    found = [
        f"{path.relative_to(ROOT)}:{i}: {line.strip()[:80]}"
        for path in _tracked_text_files()
        for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if FOREIGN.search(line)
    ]
    assert not found, found
