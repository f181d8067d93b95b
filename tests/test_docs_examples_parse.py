"""Every ``diffkit ...`` example command in README.md, docs/*.md and docs/interop/*.md parses with the current parser.

The commands are taken from the fenced code blocks tagged bash / sh / shell / console or untagged (``python`` and
other languages are skipped): a line starting with ``diffkit `` (after ``\\`` continuations are joined and leading
``NAME=value`` environment assignments dropped), split as the shell splits it (``#`` comments dropped), a lone
``...`` (elided arguments) dropped. Only ``build_parser().parse_args`` runs: nothing is read, written or executed;
paths in the examples are placeholders that argparse only stores; a flag must be
given by its full name (argparse would take an abbreviation). Lines the parser cannot take because they are
shell syntax, not one diffkit command, are listed in :data:`SHELL_SYNTAX` (and must still be in the docs)."""
import argparse
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ([ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
        + sorted((ROOT / "docs" / "interop").glob("*.md")))  # the pages split out of docs/interop.md
SHELL_LANGS = ("", "bash", "sh", "shell", "console")

# Example lines that are not one diffkit command line (the start of the line is enough to name them).
SHELL_SYNTAX = {
    "diffkit eval|edit|upscale --checkpoint BASE": "one line for three sub-commands (docs/fine_tuning.md)",
}
ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=\S*$")  # OMP_NUM_THREADS=1 diffkit ...
VARIABLE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(\"[^\"]*\".*)$")  # TINY="--steps 20 ..."  # comment


def example_commands():
    """(doc name, line) of every diffkit example line in the shell code blocks: ``A && B`` gives A and B, and a
    block's ``NAME="words"`` variables are expanded in its later lines (``$NAME``)."""
    for doc in DOCS:
        text = doc.read_text()
        for block in re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```", text, re.M | re.S):
            if block.group(1) not in SHELL_LANGS:
                continue
            variables = {}
            for line in re.sub(r"\\\n\s*", " ", block.group(2)).splitlines():
                definition = VARIABLE.match(line)
                if definition:
                    variables[definition.group(1)] = shlex.split(definition.group(2), comments=True)[0]
                    continue
                for name, value in variables.items():
                    line = re.sub(r"\$\{?%s\b\}?" % name, value, line)
                for part in line.split(" && "):
                    words = part.strip().split(" ")
                    while words and ENV.match(words[0]):
                        words.pop(0)
                    part = " ".join(words)
                    if part.startswith("diffkit "):
                        yield doc.relative_to(ROOT).as_posix(), part


EXAMPLES = list(example_commands())


def argv_of(line: str) -> list:
    """The argv of an example line (the ``diffkit`` word dropped), as the shell splits it."""
    lexer = shlex.shlex(re.sub(r"(?<=\s)\.\.\.(?=\s|$)", "", line), posix=True)  # an unquoted ... only
    lexer.whitespace_split, lexer.commenters = True, "#"
    return list(lexer)[1:]


@pytest.fixture(scope="module")
def parser():
    from diffkit.cli import build_parser
    return build_parser()


def test_the_docs_have_examples():
    assert len(EXAMPLES) > 200, len(EXAMPLES)  # the extraction still finds them
    lines = [line for _, line in EXAMPLES]
    for start in SHELL_SYNTAX:
        assert any(line.startswith(start) for line in lines), f"{start!r} is no longer in the docs: drop it"


def option_strings(parser) -> set:
    """Every option string of ``parser`` and its sub-commands' parsers (``experiment``'s tables too)."""
    out = set()
    for action in parser._actions:
        out.update(action.option_strings)
        for sub in (action.choices or {}).values() if isinstance(action, argparse._SubParsersAction) else ():
            out |= option_strings(sub)
    return out


def test_every_example_parses(parser):
    failures, known = [], option_strings(parser)
    for doc, line in EXAMPLES:
        if any(line.startswith(start) for start in SHELL_SYNTAX):
            continue
        try:
            argv = argv_of(line)
            unknown = [w for w in argv if w.startswith("--") and w.split("=")[0] not in known]
            if unknown:  # argparse would take an abbreviation (--flow-shif) as the flag it starts
                failures.append(f"{doc}: {line} (not a flag's full name: {unknown[0]})")
                continue
            parser.parse_args(argv)
        except SystemExit:  # the parser's one-line error is on stderr; name the line here
            failures.append(f"{doc}: {line}")
        except ValueError as e:  # shlex: no closing quotation
            failures.append(f"{doc}: {line} ({e})")
    assert not failures, "examples that no longer parse:\n" + "\n".join(failures)


def sub_parsers(parser, prefix="diffkit"):
    """(command name, parser) of every sub-command (and ``experiment``'s tables), each once."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield f"{prefix} {name}", sub
                    yield from sub_parsers(sub, f"{prefix} {name}")


def test_every_flag_is_documented_and_has_help(parser):
    """Each flag of each sub-command has a help text, which names its default where argparse holds one (a value
    flag's), and is named (in full) in README.md or a docs page."""
    docs = "".join(doc.read_text() for doc in DOCS)
    missing_help, no_default, undocumented = [], [], []
    flag_actions = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._AppendAction)
    for command, sub in sub_parsers(parser):
        for action in sub._actions:
            flags = [o for o in action.option_strings if o.startswith("--") and o != "--help"]
            if flags and (not action.help or action.help == argparse.SUPPRESS):
                missing_help.append(f"{command} {flags[0]}")
            elif flags and action.default is not None and not isinstance(action, flag_actions) \
                    and "default" not in action.help:
                no_default.append(f"{command} {flags[0]} ({action.default!r})")
            undocumented += [f"{command} {o}" for o in flags if not re.search(re.escape(o) + r"(?![\w-])", docs)]
    assert not missing_help, f"flags without a help text: {missing_help}"
    assert not no_default, f"help texts that do not name the flag's default: {no_default}"
    assert not undocumented, f"flags no doc page names: {undocumented}"


def test_every_example_sampler_is_registered(parser):
    """argparse stores ``--sampler`` as a string: a docs example naming a sampler diffkit does not have (say
    ``dpmpp_2m`` for ``dpm-solver++-2m``) would parse and fail only when run."""
    from diffkit.samplers.registry import REGISTRY, split_sampler_spec
    wrong = []
    for doc, line in EXAMPLES:
        if any(line.startswith(start) for start in SHELL_SYNTAX):
            continue
        args = parser.parse_args(argv_of(line))
        spec = getattr(args, "sampler", None)
        if isinstance(spec, str) and split_sampler_spec(spec)[0] not in REGISTRY:
            wrong.append(f"{doc}: {line} (sampler {spec!r})")
    assert not wrong, "examples naming an unknown sampler:\n" + "\n".join(wrong)
