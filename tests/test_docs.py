"""The code points its reader only to documents that ship in the repository."""

import re

from tests.conftest import REPO

FOLDERS = ("rmlab", "hydra_plugins", "tests", "bench", "conf")
OUTSIDE = ("DESIGN" + ".md", "FACTS" + ".md")  # notes of the people who built rmlab, not in the repository


def source_files():
    for folder in FOLDERS:
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".yaml", ".md", ".txt") and "__pycache__" not in path.parts:
                yield path


def test_no_pointer_to_documents_outside_the_repository():
    cited = [f"{path.relative_to(REPO)}: {name}" for path in source_files() for name in OUTSIDE
             if name in path.read_text(encoding="utf-8")]
    assert not cited


def test_every_document_the_code_points_to_exists():
    pointers = {(path.relative_to(REPO), doc) for path in source_files()
                for doc in re.findall(r"\b(docs/[\w./-]+\.md)\b", path.read_text(encoding="utf-8"))}
    assert pointers, "the code points to docs/design.md for its design notes"
    assert all((REPO / doc).is_file() for _, doc in pointers), pointers
