"""Write the README's table of bad inputs from the catalogue the tests run (``tests/bad_inputs.py``).

    python tools/build_bad_input_table.py          # rewrite the table in README.md
    python tools/build_bad_input_table.py --check  # exit 1 if README.md's table is not the catalogue's

The table sits between ``<!-- bad-inputs: begin -->`` and ``<!-- bad-inputs: end -->``.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.bad_inputs import CASES  # noqa: E402

BEGIN, END = "<!-- bad-inputs: begin -->", "<!-- bad-inputs: end -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_table() -> str:
    rows = ["| where | given | what happens |", "|---|---|---|"]
    for case in CASES:
        answer = f"refused: “{_cell(case.answer)} …”" if case.answer else "read correctly: the same edit"
        rows.append(f"| {case.surface} | {_cell(case.given)} | {answer} |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    readme = REPO / "README.md"
    text = readme.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    updated = f"{text[:start]}\n{render_table()}\n{text[end:]}"
    if "--check" in argv:
        return 0 if updated == text else 1
    readme.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
