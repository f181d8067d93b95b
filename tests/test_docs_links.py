"""In-repo links of README.md, docs/*.md and docs/interop/*.md (the pages split out of docs/interop.md) resolve: a
relative file link names an existing file or folder, and an ``#anchor`` (in the same file or after a linked .md file)
names one of that file's headings, by GitHub's anchor rules (:func:`test_docs_interop_matrix.anchors`: lower case,
punctuation but ``-`` and ``_`` dropped, spaces to ``-``, repeats numbered ``-1``, ``-2``). Links inside code
(fenced blocks and ``inline code``) are not links; web links (``http(s)://``, ``mailto:``) are not checked. Text
only, fast."""
import re
from pathlib import Path

from test_docs_interop_matrix import anchors

ROOT = Path(__file__).resolve().parents[1]
DOCS = ([ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
        + sorted((ROOT / "docs" / "interop").glob("*.md")))  # the pages split out of docs/interop.md
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")  # [text](target "title")


def prose(text: str) -> str:
    """``text`` without its fenced code blocks and inline code spans (their brackets are no links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`(?:[^`\n]|\n(?![ \t]*\n))*`", "", text)  # a code span may go over a line break


def links(doc: Path):
    """The link targets of ``doc``'s prose, in order."""
    return [m.group(1) for m in LINK.finditer(prose(doc.read_text()))]


def broken_links(doc: Path) -> list:
    broken, cache = [], {}
    for target in links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{doc.relative_to(ROOT)}: {target} (no such file)")
            continue
        if anchor and file.suffix == ".md":
            if file not in cache:
                cache[file] = anchors(file.read_text())
            if anchor not in cache[file]:
                broken.append(f"{doc.relative_to(ROOT)}: {target} (no such heading in {file.name})")
    return broken


def test_links_are_found():
    counts = {doc.relative_to(ROOT).as_posix(): len(links(doc)) for doc in DOCS}
    for name in ("docs/interop.md", "docs/samplers.md", "docs/editing.md"):
        assert counts[name] > 0, counts  # the docs the contents' links live in still have links
    for page in DOCS:  # and each page split out of docs/interop.md is checked: it links back to it
        if page.parent.name == "interop":
            assert any(target.partition("#")[0] == "../interop.md" for target in links(page)), page


def test_in_repo_links_resolve():
    broken = [line for doc in DOCS for line in broken_links(doc)]
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_github_anchor_rules():
    text = "# Fill / Depth: `--mask`\n```\n# not a heading\n```\n## Notes\n## Notes\n### SD-XL (v1.0)\n"
    assert anchors(text) == {"fill--depth---mask", "notes", "notes-1", "sd-xl-v10"}
