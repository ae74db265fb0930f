"""One-line mutation testing of the adapter maths, the adapter file format and the store's Lua scripts.

Why: the petl tests used to compare vpetl with itself (stacked vs single, bank vs model, ONNX vs torch all run
``vpetl/petl/functional.py``), so a wrong sign or activation there passed every test. This script makes the
question "would the tests notice?" cheap to ask again: it applies one small mutant at a time (operator swap, sign
flip, constant change, activation swap; inside the Lua source strings: comparison/logic operators, numbers,
``+``/``-``) to a target file in a *temporary copy* of the repository (the working tree, which other people may be
editing, is never written), runs that file's fast test subset with ``-x``, and reports which mutants the tests
killed and which survived, as a table and as JSON.

    .venv/bin/python tests/mutation/mutate.py                   # default cap per file, working tree
    .venv/bin/python tests/mutation/mutate.py --rev HEAD        # a committed snapshot (git archive)
    .venv/bin/python tests/mutation/mutate.py --list            # only print the mutants
    .venv/bin/python tests/mutation/mutate.py --files vpetl/artifact.py --max-per-file 0   # every mutant

Mutants are generated from the AST (Python) or a token regex (Lua), deterministically; with more candidates than
``--max-per-file`` a seeded sample is taken, activation swaps and operator swaps first (the classic silent maths
bugs). A mutant whose test run exceeds its timeout counts as killed (reported as "timeout").
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# target file -> the fast test subset that should notice a change in it (pytest arguments, run with -x: the
# tests most likely to kill a mutant come first, so a killed mutant costs seconds and only survivors pay for the
# whole subset). Parameter counts (test_counts) and the cluster store tests never read these files' logic paths.
TARGETS: dict[str, list[str]] = {
    "vpetl/petl/functional.py": [
        "tests/vpetl/petl/test_reference.py",
        "tests/vpetl/petl/test_functional.py",
        "tests/vpetl/petl/test_bank.py",
        "tests/vpetl/petl/test_methods.py",
        "tests/vpetl/petl/test_io.py",
    ],
    "vpetl/artifact.py": [
        "tests/vpetl/test_artifact.py",
        "tests/vpetl/test_artifact_boundaries.py",
        "tests/vpetl/petl/test_io.py",
    ],
    "vpetl/store/_scripts.py": ["tests/vpetl/store", "-k", "not cluster"],
}

# --------------------------------------------------------------------------------------------- mutants
BINOP = {
    ast.Add: ("+", "-"), ast.Sub: ("-", "+"), ast.Mult: ("*", "/"), ast.Div: ("/", "*"), ast.FloorDiv: ("//", "*"),
    ast.Mod: ("%", "//"), ast.Pow: ("**", "*"), ast.MatMult: ("@", "*"),
}
COMPARE = {
    ast.Lt: (r"<(?!=)", "<="), ast.LtE: (r"<=", "<"), ast.Gt: (r">(?!=)", ">="), ast.GtE: (r">=", ">"),
    ast.Eq: (r"==", "!="), ast.NotEq: (r"!=", "=="), ast.In: (r"(?<!not )\bin\b", "not in"),
    ast.NotIn: (r"\bnot\s+in\b", "in"), ast.Is: (r"\bis\b(?!\s+not)", "is not"), ast.IsNot: (r"\bis\s+not\b", "is"),
}
# activations and their swap (the same shape, a different function: a classic silent bug)
ACTIVATION_ATTRS = {
    "torch.tanh": "torch.sigmoid", "F.relu": "F.gelu", "F.gelu": "F.relu", "torch.relu": "torch.tanh",
    "torch.sigmoid": "torch.tanh", "torch.softmax": "torch.log_softmax",
}
ACTIVATION_NAMES = {"relu": "gelu", "tanh": "relu", "gelu": "tanh"}
PRIORITY = ("activation", "operator")  # the classic silent maths bugs: wrong function, wrong sign


@dataclass(frozen=True)
class Mutant:
    """Replace source[start:end] (character offsets in the whole file) by ``new``."""

    file: str
    line: int
    kind: str
    start: int
    end: int
    new: str
    old: str

    @property
    def ident(self) -> str:
        return f"{self.file}:{self.line}:{self.kind}:{self.old}->{self.new}@{self.start}"

    def apply(self, source: str) -> str:
        assert source[self.start:self.end] == self.old, self.ident
        return source[: self.start] + self.new + source[self.end:]

    def show(self, source: str) -> tuple[str, str]:
        """(original line, mutated line), stripped."""
        a = source.rfind("\n", 0, self.start) + 1
        b = source.find("\n", self.end)
        b = len(source) if b < 0 else b
        return source[a:b].strip(), (source[a:self.start] + self.new + source[self.end:b]).strip()


class _Offsets:
    """(lineno, UTF-8 byte col) from the AST -> character offset in the file (comments may hold non-ASCII)."""

    def __init__(self, source: str) -> None:
        self.lines = source.splitlines(keepends=True)
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))

    def at(self, lineno: int, col: int) -> int:
        line = self.lines[lineno - 1]
        return self.starts[lineno - 1] + len(line.encode()[:col].decode())


def _skipped_nodes(tree: ast.AST) -> set[int]:
    """ids of nodes never mutated: docstrings, annotations (strings at runtime under ``from __future__ import
    annotations``, so a mutant there is equivalent), f-strings and error-message construction in ``raise``."""
    skip: set[int] = set()

    def mark(node: ast.AST | None) -> None:
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                mark(body[0])
        if isinstance(node, ast.arg):
            mark(node.annotation)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            mark(node.returns)
        elif isinstance(node, ast.AnnAssign):
            mark(node.annotation)
        elif isinstance(node, ast.JoinedStr | ast.Raise):
            mark(node)
    return skip


def _token_between(src: str, a: int, b: int, pattern: str) -> tuple[int, int] | None:
    """The first match of ``pattern`` in src[a:b] outside a comment, as absolute offsets."""
    seg = src[a:b]
    clean = re.sub(r"#[^\n]*", lambda m: " " * len(m.group()), seg)
    m = re.search(pattern, clean)
    return (a + m.start(), a + m.end()) if m else None


def python_mutants(rel: str, source: str) -> list[Mutant]:
    tree = ast.parse(source)
    off = _Offsets(source)
    skip = _skipped_nodes(tree)
    out: list[Mutant] = []

    def add(node: ast.AST, kind: str, start: int, end: int, new: str) -> None:
        out.append(Mutant(rel, node.lineno, kind, start, end, new, source[start:end]))  # type: ignore[attr-defined]

    def end_of(n: ast.AST) -> int:
        return off.at(n.end_lineno, n.end_col_offset)  # type: ignore[attr-defined, arg-type]

    def start_of(n: ast.AST) -> int:
        return off.at(n.lineno, n.col_offset)  # type: ignore[attr-defined]

    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.BinOp) and type(node.op) in BINOP:
            if any(isinstance(s, ast.JoinedStr) or (isinstance(s, ast.Constant) and isinstance(s.value, str | bytes))
                   for s in (node.left, node.right)):
                continue  # string concatenation: "-" is a TypeError, killed by any import
            sym, new = BINOP[type(node.op)]
            span = _token_between(source, end_of(node.left), start_of(node.right), re.escape(sym))
            if span:
                add(node, "operator", *span, new)
        elif isinstance(node, ast.Compare):
            left = node.left
            for op, right in zip(node.ops, node.comparators, strict=True):
                if type(op) in COMPARE:
                    pattern, new = COMPARE[type(op)]
                    span = _token_between(source, end_of(left), start_of(right), pattern)
                    if span:
                        add(node, "comparison", *span, new)
                left = right
        elif isinstance(node, ast.BoolOp):
            word, new = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
            span = _token_between(source, end_of(node.values[0]), start_of(node.values[1]), rf"\b{word}\b")
            if span:
                add(node, "logic", *span, new)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.Not):
            s = start_of(node)
            pattern = r"-" if isinstance(node.op, ast.USub) else r"not\s+"
            m = re.match(pattern, source[s:])
            if m:
                add(node, "sign" if isinstance(node.op, ast.USub) else "logic", s, s + m.end(), "")
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float, bool):
            s, e = start_of(node), end_of(node)
            v = node.value
            if isinstance(v, bool):
                new = str(not v)
            elif isinstance(v, int):
                new = "1" if v == 0 else ("0" if v == 1 else str(v + 1))
            else:
                new = "1.0" if v == 0 else repr(v * 2)
            add(node, "constant", s, e, new)
        elif isinstance(node, ast.Attribute):
            s, e = start_of(node), end_of(node)
            text = source[s:e]
            if text in ACTIVATION_ATTRS:
                add(node, "activation", s, e, ACTIVATION_ATTRS[text])
        elif isinstance(node, ast.Call):
            for arg in node.args:
                if isinstance(arg, ast.Constant) and arg.value in ACTIVATION_NAMES and id(arg) not in skip:
                    s, e = start_of(arg), end_of(arg)
                    q = source[s]
                    add(arg, "activation", s, e, f"{q}{ACTIVATION_NAMES[arg.value]}{q}")
    return out


# Lua: string literals are skipped, comments removed before matching.
LUA_TOKEN = re.compile(
    r"'[^'\n]*'|\"[^\"\n]*\"|~=|==|>=|<=|(?<![-<>=~])>(?!=)|(?<![-<>=~])<(?!=)|\band\b|\bor\b|\bnot\s+|"
    r"(?<![\w.])\d+(?![\w.])|(?<=\s)[+-](?=\s)"
)
LUA_SWAP = {"~=": "==", "==": "~=", ">=": ">", "<=": "<", ">": ">=", "<": "<=", "and": "or", "or": "and",
            "+": "-", "-": "+"}


def lua_mutants(rel: str, source: str) -> list[Mutant]:
    """Mutants inside the module-level Lua source strings (``NAME = \"\"\"...\"\"\"``)."""
    tree = ast.parse(source)
    off = _Offsets(source)
    out: list[Mutant] = []
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)):
            continue
        a = off.at(node.value.lineno, node.value.col_offset)
        b = off.at(node.value.end_lineno, node.value.end_col_offset)  # type: ignore[arg-type]
        pos = a
        for line in source[a:b].splitlines(keepends=True):
            code = line
            comment = re.search(r"--", code)
            if comment:  # Lua comments (no '--' occurs inside a Lua string literal in these scripts)
                code = code[: comment.start()]
            lineno = source.count("\n", 0, pos) + 1
            for m in LUA_TOKEN.finditer(code):
                tok = m.group()
                if tok[0] in "'\"":
                    continue
                if tok.startswith("not"):
                    new = ""
                elif tok.isdigit():
                    new = str(int(tok) + 1)
                else:
                    new = LUA_SWAP[tok]
                kind = "lua-constant" if tok.isdigit() else "lua-operator"
                out.append(Mutant(rel, lineno, kind, pos + m.start(), pos + m.end(), new, tok))
            pos += len(line)
    return out


def mutants_for(rel: str, source: str) -> list[Mutant]:
    found = python_mutants(rel, source)
    if rel.endswith("_scripts.py"):
        # the Python side of the scripts module is only status-code constants; the logic is the Lua
        found = [m for m in found if m.kind == "constant" or m.kind == "sign"] + lua_mutants(rel, source)
    return sorted(found, key=lambda m: m.start)


def select(mutants: list[Mutant], cap: int, seed: int) -> list[Mutant]:
    """Every mutant when cap is 0 or enough; else activation and operator swaps first, then a seeded sample."""
    if cap <= 0 or len(mutants) <= cap:
        return mutants
    first = [m for m in mutants if m.kind in PRIORITY][:cap]
    rest = [m for m in mutants if m.kind not in PRIORITY]
    chosen = first + random.Random(seed).sample(rest, cap - len(first))
    return sorted(chosen, key=lambda m: m.start)


# ------------------------------------------------------------------------------------------------- runs
def make_copy(rev: str | None) -> Path:
    """A temporary copy of the repository: ``git archive rev`` or the working tree (what git does not ignore)."""
    tmp = Path(tempfile.mkdtemp(prefix="vpetl-mutate-"))
    if rev:
        archive = subprocess.run(["git", "archive", rev], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
    else:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, check=True,
            capture_output=True,
        ).stdout.decode().split("\0")
        for rel in filter(None, listed):
            src = ROOT / rel
            if src.is_file():
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, tmp / rel)
    return tmp


def test_env(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    # The copy's vpetl must shadow the editable install of the working tree, in subprocesses too; no .pyc files,
    # so a same-size mutant written within the same second can never run a stale cached bytecode.
    env["PYTHONPATH"] = str(copy) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@dataclass
class Result:
    status: str  # killed | survived | timeout | error (baseline only)
    seconds: float
    killer: str = ""


def run_tests(copy: Path, args: list[str], timeout: float) -> Result:
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", "-o",
           "addopts=--import-mode=importlib", *args]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=copy, env=test_env(copy), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Result("timeout", time.monotonic() - t0)
    dt = time.monotonic() - t0
    if proc.returncode == 0:
        return Result("survived", dt)
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, flags=re.M)
    return Result("killed", dt, failed[0] if failed else f"exit {proc.returncode}")


def check_shadowing(copy: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import vpetl; print(vpetl.__file__)"], cwd=copy, env=test_env(copy),
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    if not Path(out).resolve().is_relative_to(copy.resolve()):
        raise SystemExit(f"the copy's vpetl does not shadow the installed one (imported {out})")


def iter_files(selected: list[str] | None) -> Iterator[tuple[str, list[str]]]:
    for rel, tests in TARGETS.items():
        if selected is None or rel in selected:
            yield rel, tests


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", nargs="*", help=f"targets (default: all of {list(TARGETS)})")
    ap.add_argument("--max-per-file", type=int, default=25, help="cap per file (0 = every mutant)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rev", help="mutate a committed snapshot (git archive REV) instead of the working tree")
    ap.add_argument("--json", type=Path, default=ROOT / "build" / "mutation" / "report.json")
    ap.add_argument("--list", action="store_true", help="print the selected mutants and exit")
    ap.add_argument("--timeout-factor", type=float, default=3.0, help="per-mutant timeout = factor × baseline")
    opts = ap.parse_args(argv)

    plan: list[tuple[str, list[str], str, list[Mutant], int]] = []
    for rel, tests in iter_files(opts.files):
        source = (ROOT / rel).read_text() if not opts.rev else subprocess.run(
            ["git", "show", f"{opts.rev}:{rel}"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout
        every = mutants_for(rel, source)
        plan.append((rel, tests, source, select(every, opts.max_per_file, opts.seed), len(every)))
    if opts.list:
        for rel, _, source, chosen, total in plan:
            print(f"{rel}: {len(chosen)} of {total} candidate mutants")
            for m in chosen:
                print(f"  {m.line:4d} {m.kind:12s} {m.show(source)[1]}")
        return 0

    copy = make_copy(opts.rev)
    report: dict = {"rev": opts.rev or "working tree", "seed": opts.seed, "max_per_file": opts.max_per_file,
                    "files": {}, "mutants": []}
    try:
        check_shadowing(copy)
        for rel, tests, source, chosen, total in plan:
            target = copy / rel
            target.write_text(source)
            base = run_tests(copy, tests, timeout=1800)
            print(f"\n== {rel}: baseline {base.status} in {base.seconds:.0f}s; {len(chosen)} of {total} mutants",
                  flush=True)
            if base.status != "survived":  # the unmutated copy must pass, else nothing can be concluded
                report["files"][rel] = {"baseline": f"failed ({base.killer})", "total": len(chosen), "killed": None}
                continue
            killed = 0
            for m in chosen:
                target.write_text(m.apply(source))
                try:
                    r = run_tests(copy, tests, timeout=max(60.0, opts.timeout_factor * base.seconds))
                finally:
                    target.write_text(source)
                killed += r.status != "survived"
                before, after = m.show(source)
                print(f"  {r.status:8s} {r.seconds:5.0f}s  {rel}:{m.line} [{m.kind}] {after}"
                      + (f"   <- {r.killer}" if r.killer else ""), flush=True)
                report["mutants"].append({**dataclasses.asdict(m), "status": r.status, "seconds": round(r.seconds, 1),
                                          "killer": r.killer, "before": before, "after": after})
            report["files"][rel] = {"baseline_seconds": round(base.seconds, 1), "candidates": total,
                                    "total": len(chosen), "killed": killed}
    finally:
        shutil.rmtree(copy, ignore_errors=True)

    print("\n| file | killed / run | candidates |\n|---|---|---|")
    for rel, f in report["files"].items():
        print(f"| {rel} | {f['killed']} / {f['total']} | {f.get('candidates', '')} |")
    survivors = [m for m in report["mutants"] if m["status"] == "survived"]
    if survivors:
        print("\nsurvivors:")
        for m in survivors:
            print(f"  {m['file']}:{m['line']} [{m['kind']}] {m['before']}  ->  {m['after']}")
    opts.json.parent.mkdir(parents=True, exist_ok=True)
    opts.json.write_text(json.dumps(report, indent=2))
    print(f"\nJSON report: {opts.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
