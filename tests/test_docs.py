"""The examples in README.md and docs/*.md run, their links resolve, and the pages keep their shape.

Every ```python and ```bash block is an example. It is executed unless the line right before its
fence is `<!-- not run: REASON -->` (real checkpoints, a GPU, a long run). A page's Python blocks
run in order in one namespace, so a block may use what an earlier block on the same page defined;
the pages run one after another in one fresh interpreter (imports are paid once) with the
repository as working directory. Each bash block runs alone with `bash -euo pipefail`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = ("python", "bash")
SKIP = re.compile(r"^<!-- not run: (.*\S)\s*-->$")
FENCE = re.compile(r"^```(\S*)")
MAX_LINE = 100
README_MAX_LINES = 250
# generated regions (experiments/results.py), whose lines are not ours to wrap
GENERATED = [
    ("<!-- results: generated", "<!-- end of results -->"),
    ("<!-- headline: generated", "<!-- end of headline -->"),
]


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    skip: str | None  # the reason it is not run, None when it runs

    def __str__(self):
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    lines = page.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start = i
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            i += 1
        before = lines[start - 1].strip() if start else ""
        skip = SKIP.match(before)
        found.append(
            Block(
                page,
                start + 1,
                match.group(1),
                "\n".join(lines[start + 1 : i]) + "\n",
                skip.group(1) if skip else None,
            )
        )
        i += 1
    return found


ALL = [b for page in PAGES for b in blocks(page)]
EXAMPLES = [b for b in ALL if b.language in LANGUAGES]
PYTHON_PAGES = sorted({b.page for b in EXAMPLES if b.language == "python" and b.skip is None})
BASH = [b for b in EXAMPLES if b.language == "bash" and b.skip is None]

DRIVER = """
import json, sys, traceback
failures = {}
for page, code in json.load(sys.stdin).items():
    namespace = {"__name__": "__main__"}
    for line, block in code:
        try:
            exec(compile(block, f"{page}, the block at line {line}", "exec"), namespace)
        except BaseException:
            failures[page] = traceback.format_exc()
            break
print("FAILURES " + json.dumps(failures))
"""


def env() -> dict:
    paths = [str(ROOT), os.environ.get("PYTHONPATH")]
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, paths)))
    environment.setdefault("OMP_NUM_THREADS", "1")
    return environment


def test_there_are_pages_and_examples():
    assert (ROOT / "docs").is_dir() and len(PAGES) > 1
    assert PYTHON_PAGES and BASH


def test_every_skipped_example_says_why_and_every_marker_precedes_an_example():
    for page in PAGES:
        lines = page.read_text().splitlines()
        fences = {b.line - 1 for b in blocks(page) if b.language in LANGUAGES}
        for number, line in enumerate(lines, 1):
            if line.startswith("<!-- not run"):
                where = f"{page.name}:{number}"
                assert SKIP.match(line.strip()), f"{where}: write <!-- not run: REASON -->"
                assert number in fences, f"{where}: a not-run marker must be right before a fence"
    for block in EXAMPLES:
        assert block.skip is None or block.skip.strip(), block


def test_code_blocks_name_a_language_or_are_output():
    """A fence's info string is python, bash, or empty (output, a command line shown as text)."""
    for block in ALL:
        assert block.language in (*LANGUAGES, ""), f"{block}: info string {block.language!r}"


@pytest.fixture(scope="module")
def python_failures() -> dict:
    """{page: traceback} for the pages whose Python examples failed, from one interpreter."""
    code = {
        str(page.relative_to(ROOT)): [
            (b.line, b.code) for b in blocks(page) if b.language == "python" and b.skip is None
        ]
        for page in PYTHON_PAGES
    }
    done = subprocess.run(
        [sys.executable, "-c", DRIVER],
        input=json.dumps(code),
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    last = done.stdout.strip().splitlines()[-1:] or [""]
    assert done.returncode == 0 and last[0].startswith("FAILURES "), done.stderr[-4000:]
    return json.loads(last[0].removeprefix("FAILURES "))


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_examples_run(page, python_failures):
    failure = python_failures.get(str(page.relative_to(ROOT)))
    assert failure is None, failure[-4000:]


@pytest.mark.parametrize("block", BASH, ids=str)
def test_bash_examples_run(block):
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.code],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, f"{block}: {done.stdout[-2000:]}\n{done.stderr[-4000:]}"


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, fenced = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            found.add(slug(line.lstrip("#")))
    return found


def prose(page: Path):
    """(line number, line) outside code blocks."""
    fenced = False
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield number, line


def test_relative_links_point_to_files_and_anchors_that_exist():
    for page in PAGES:
        for number, line in prose(page):
            for target in LINK.findall(line):
                if re.match(r"^[a-z]+:", target):
                    continue
                path, _, anchor = target.partition("#")
                file = (page.parent / path).resolve() if path else page
                assert file.exists(), f"{page.name}:{number}: {target} does not exist"
                if anchor:
                    assert file.suffix == ".md" and anchor in anchors(file), (
                        f"{page.name}:{number}: no heading for #{anchor} in {file.name}"
                    )


def test_readme_is_a_front_page_linking_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    assert "make demo" in readme.split("\n## ")[0] and "make test" in readme.split("\n## ")[0]
    for page in PAGES[1:]:
        assert f"(docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"


def test_lines_fit_100_characters_except_tables_urls_and_generated_regions():
    long = []
    for page in PAGES:
        generated = False
        for number, line in enumerate(page.read_text().splitlines(), 1):
            if any(line.startswith(begin) for begin, _ in GENERATED):
                generated = True
            elif any(line.startswith(end) for _, end in GENERATED):
                generated = False
            elif (
                not generated
                and len(line) > MAX_LINE
                and not line.startswith("|")
                and "://" not in line
            ):
                long.append(f"{page.name}:{number} has {len(line)} characters")
    assert not long, "\n".join(long)
