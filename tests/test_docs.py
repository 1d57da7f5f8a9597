"""The documentation holds together: a README that stays a landing page, links that resolve, commands that exist.

Checked on the text alone (no command is run, nothing is imported but ``varnet_ds.cli`` and ``analysis``):

* ``README.md`` is at most 12 KB, shows ``make test`` as the test command, and holds the generated results block's
  markers once each, in a form ``analysis/study.py --readme`` (``make results``) can rewrite;
* every relative link and image of ``README.md`` and ``docs/**/*.md`` points to an existing file or folder, and a
  ``#fragment`` to a heading of the target page (GitHub's anchor rules); every page under ``docs/`` can be reached
  from the README by following links;
* in the ``bash`` blocks, every ``varnet-ds COMMAND`` is a command of ``varnet_ds/cli.py``, every
  ``python -m varnet_ds.X`` a module, every ``make TARGET`` a Makefile target, and every path into the repository
  (``launch/``, ``ds_configs/``, ``varnet_ds/``, ...) exists.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

from varnet_ds.analysis.study.markdown import README_END, README_START, replace_block
from varnet_ds.cli import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_MAX_BYTES = 12 * 1024
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
# files a reader creates before the command that uses them (the docs say so)
USER_CREATED = {"launch/hostfile": "copied from launch/hostfile.example"}
REPO_PATH = re.compile(r"(?<![\w./-])((?:launch|ds_configs|varnet_ds|analysis|scripts|tests|docs)/[\w./-]*[\w/])")


def prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code (links inside them are examples, not links)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").replace("*", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> Set[str]:
    """Every anchor of a markdown page: heading slugs, repeated ones numbered ``-1``, ``-2``, ... as GitHub does."""
    seen: Counter = Counter()
    out = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        base = slug(heading)
        out.add(base if not seen[base] else f"{base}-{seen[base]}")
        seen[base] += 1
    return out


def relative_links(page: Path) -> Iterator[Tuple[str, Path, str]]:
    """``(link as written, target path, fragment)`` of every relative link of ``page``."""
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        yield target, (page.parent / path).resolve() if path else page, fragment


def shown(path: Path) -> Path:
    """``path`` relative to the repository when inside it (for messages)."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def link_errors(pages: List[Path]) -> List[str]:
    """One line per broken link of ``pages``: a missing file or folder, or a fragment naming no heading."""
    errors = []
    for page in pages:
        for written, path, fragment in relative_links(page):
            where = f"{shown(page)}: ({written})"
            if not path.exists():
                errors.append(f"{where}: {shown(path)} does not exist")
            elif fragment and path.suffix == ".md" and fragment not in anchors(path):
                errors.append(f"{where}: no heading '#{fragment}' in {shown(path)} (anchors: {sorted(anchors(path))})")
    return errors


def bash_blocks(page: Path) -> List[str]:
    """The contents of the ```bash blocks of ``page``, continuation lines joined."""
    return [body.replace("\\\n", " ") for lang, body in FENCE.findall(page.read_text(encoding="utf-8"))
            if lang in ("bash", "sh", "shell")]


def command_errors(page: Path, make_targets: Set[str]) -> List[str]:
    """Commands of ``page``'s bash blocks that name a missing varnet-ds command, module, make target or file."""
    errors = []
    for block in bash_blocks(page):
        code = "\n".join(line.split("#", 1)[0] if not line.lstrip().startswith("#!") else "" for line in
                         block.splitlines())  # comments are prose
        for name in re.findall(r"\bvarnet-ds\s+([a-z][\w-]*)", code):
            if name not in COMMANDS and name != "help":
                errors.append(f"{page.name}: varnet-ds {name}: no such command in varnet_ds/cli.py")
        for module in re.findall(r"python\S*\s+-m\s+(varnet_ds[\w.]*)", code):
            rel = Path(*module.split("."))
            if not ((ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__main__.py").is_file()):
                errors.append(f"{page.name}: python -m {module}: no such module")
        for target in re.findall(r"(?:^|[;&|]\s*)make\s+([a-z][\w-]*)", code, re.M):
            if target not in make_targets:
                errors.append(f"{page.name}: make {target}: no such Makefile target")
        for rel in REPO_PATH.findall(code):
            if not (ROOT / rel).exists() and rel not in USER_CREATED:
                errors.append(f"{page.name}: {rel}: no such file in the repository")
    return errors


def makefile_targets() -> Set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M))


def test_readme_is_a_landing_page():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, (f"README.md is {size} bytes (> {README_MAX_BYTES}): move detail into docs/ "
                                      "and link it")
    text = README.read_text(encoding="utf-8")
    assert any(re.search(r"^make test\b", block, re.M) for block in bash_blocks(README)), \
        "README.md must show `make test` (what .ci/run runs) in a bash block"
    assert re.search(r"^make test\b", (ROOT / ".ci" / "run").read_text(encoding="utf-8"), re.M)
    for marker in (README_START, README_END):
        assert [line.strip() for line in text.splitlines()].count(marker) == 1, f"README.md: {marker} not once"


def test_results_block_can_be_rewritten_by_make_results():
    """``analysis/study.py --readme`` rewrites exactly the lines between the markers and nothing else."""
    text = README.read_text(encoding="utf-8")
    rewritten = replace_block(text, "GENERATED", "README.md")
    head, tail = text.split(README_START, 1)[0], text.split(README_END, 1)[1]
    assert rewritten == f"{head}{README_START}\nGENERATED\n{README_END}{tail}"


def test_every_relative_link_resolves():
    errors = link_errors(PAGES)
    assert not errors, "broken links:\n" + "\n".join(errors)


def test_every_docs_page_is_reachable_from_the_readme():
    seen: Dict[Path, None] = {README.resolve(): None}
    todo = [README.resolve()]
    while todo:
        page = todo.pop()
        for _, path, _ in relative_links(page):
            targets = sorted(path.rglob("*.md")) if path.is_dir() else [path]
            for target in targets:
                if target.suffix == ".md" and target.is_file() and target not in seen:
                    seen[target] = None
                    todo.append(target)
    unreachable = [str(p.relative_to(ROOT)) for p in PAGES if p.resolve() not in seen]
    assert not unreachable, f"pages no link from README.md leads to: {unreachable}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_commands_in_bash_blocks_exist(page):
    errors = command_errors(page, makefile_targets())
    assert not errors, "\n".join(errors)


def test_the_checks_catch_what_they_are_for(tmp_path):
    """Each checker flags a broken page (so a green run means something)."""
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## A `code` heading: yes\n\nSee [x](missing.md), [y](#a-code-heading-yes), "
                    "[z](#nope), `[not a link](nowhere.md)`.\n\n```bash\nvarnet-ds tran --config x\n"
                    "python -m varnet_ds.nothing\nmake tests\ndeepspeed launch/none.sh  # launch/comment.sh\n```\n",
                    encoding="utf-8")
    errors = link_errors([page])
    assert len(errors) == 2 and "missing.md" in errors[0] and "#nope" in errors[1], errors
    cmd = command_errors(page, makefile_targets())
    assert [e.split(": ", 1)[1].split(":")[0] for e in cmd] == [
        "varnet-ds tran", "python -m varnet_ds.nothing", "make tests", "launch/none.sh"], cmd
    assert slug("The study: arms × seeds") == "the-study-arms--seeds"
    assert slug("No data? `make demo`") == "no-data-make-demo"

