"""The operator's vocabulary (condition types, their reasons, event reasons) is spelled once, in
gpufabric.api.reasons; the README's table says the same, and every reason the pass uses belongs to it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from gpufabric.api.reasons import CONDITIONS, ConditionReason, EventReason

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def table_rows() -> list[str]:
    rows = ["| on | condition | True means | reasons |", "|---|---|---|---|"]
    rows += [
        f"| {kind} | `{condition.value}` | {meaning} | {', '.join(f'`{r.value}`' for r in reasons)} |"
        for kind, condition, meaning, reasons in CONDITIONS
    ]
    rows.append(f"| AgentWorkload, ComputeNode | events | | {', '.join(f'`{r.value}`' for r in EventReason)} |")
    return rows


def test_the_readme_table_is_the_vocabulary() -> None:
    block = re.search(r"<!-- reasons-table:.*?-->\n(.*?)\n\s*<!-- end reasons-table -->", README.read_text(), re.DOTALL)
    assert block is not None, "README lost its reasons-table markers"
    assert [line.strip() for line in block[1].splitlines()] == table_rows(), "\n".join(table_rows())


def test_every_condition_reason_belongs_to_a_condition() -> None:
    listed = [reason for *_, reasons in CONDITIONS for reason in reasons]
    assert sorted(set(listed)) == sorted(ConditionReason)


def test_no_module_spells_a_reason_as_a_bare_string() -> None:
    """Outside the vocabulary module, a reason appears only as an enum member."""
    vocabulary = {r.value for r in ConditionReason} | {r.value for r in EventReason}
    spelled = []
    for path in sorted((ROOT / "operator" / "gpufabric").rglob("*.py")):
        if path.name == "reasons.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in vocabulary:
                spelled.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert spelled == []
