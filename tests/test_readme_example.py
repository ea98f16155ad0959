"""The README's Python example, run against a real cluster: every result its comments show is what it returns."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from kvwire.testing import LocalCluster

README = Path(__file__).resolve().parent.parent / "README.md"
# The README's endpoints, in the order of its example: n1, n2, n3.
README_ENDPOINTS = ["127.0.0.1:7379", "127.0.0.1:7380", "127.0.0.1:7381"]
# A statement, then "# what it returns" (other comments say something else: "# also a KeyError").
SHOWN_RESULT = re.compile(r"^(?P<code>\s*(?:\w+ = )?kv\.\w+\(.*\))\s+# (?P<shown>.+)$")


def python_example() -> str:
    """The first Python block after "From Python, blocking or async"."""
    text = README.read_text(encoding="utf-8")
    after = text[text.index("From Python, blocking or async"):]
    block = after[after.index("```python\n") + len("```python\n"):]
    return block[:block.index("\n```")]


def shown_results(example: str) -> dict[int, str]:
    """Line number -> the result its comment shows, for each statement with one."""
    results = {}
    for number, line in enumerate(example.splitlines()):
        match = SHOWN_RESULT.match(line)
        if match and not match["shown"].startswith("also "):
            results[number] = match["shown"]
    return results


def matches(shown: str, actual: str) -> bool:
    """``{...}`` in the README stands for any map."""
    pattern = re.escape(shown).replace(re.escape("{...}"), r"\{.*\}")
    return re.fullmatch(pattern, actual) is not None


def test_the_readme_python_example_returns_what_its_comments_show(tmp_path):
    example = python_example()
    shown = shown_results(example)
    assert len(shown) == 3, shown  # put's version, get's value, get_with_version's
    with LocalCluster(3, data_dir=tmp_path) as cluster:
        endpoints = cluster.endpoints_of("n1", "n2", "n3")
        code = example
        for readme, real in zip(README_ENDPOINTS, endpoints):
            code = code.replace(readme, real)
        # Each statement with a shown result records its value as it runs.
        seen: dict[int, str] = {}
        lines = code.splitlines()
        for number in shown:
            match = SHOWN_RESULT.match(lines[number])
            statement = match["code"]
            indent = statement[:len(statement) - len(statement.lstrip())]
            expression = re.sub(r"^\w+ = ", "", statement.strip())  # an assignment's value
            lines[number] = f"{indent}_seen[{number}] = repr({expression})"
        namespace: dict = {"_seen": seen}
        exec(compile("\n".join(lines), str(README), "exec"), namespace)
        asyncio.run(namespace["main"]())
    for number, result in shown.items():
        assert number in seen, f"README line of the example {number + 1} did not run"
        assert matches(result, seen[number]), (example.splitlines()[number].strip(), seen[number])
