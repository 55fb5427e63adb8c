"""The package's layers (docs/design.md): ops and losses at the bottom, the model integrations
above them, the command line on top. Read from the source with ``ast``: every import, at module
level or inside a function, counts.

- no import cycle among simper_rs's modules;
- a layer imports only from itself and the layers below it;
- transformers, TRL, PEFT, Accelerate and DeepSpeed are imported only by the integrations and
  the command line (``import simper_rs`` does not import them);
- no module imports another module's private (underscore) names or reads them as attributes.
"""

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "python" / "simper_rs"
FRAMEWORKS = {"transformers", "trl", "peft", "accelerate", "deepspeed"}
# The extension and the package's private helper modules: their names are how the package
# itself reaches them (bindings and runtime plumbing), not another module's internals.
PRIVATE_MODULES = {"simper_rs._core", "simper_rs._cuda", "simper_rs._torch_version"}
EXTENSION = "simper_rs._core"  # the Rust extension: below every Python module


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer(name: str) -> int:
    """0: the library (ops, losses, data, ...); 1: the integrations; 2: the command line.
    ``simper_rs.trainer`` and ``simper_rs.trl`` are the integrations' public import paths."""
    if name.startswith("simper_rs.cli") or name == "simper_rs.__main__":
        return 2
    if name.startswith("simper_rs.integrations") or name in ("simper_rs.trainer", "simper_rs.trl"):
        return 1
    return 0


def resolve(current: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = current if MODULES[current].name == "__init__.py" else current.rsplit(".", 1)[0]
    base = package.split(".")
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(name: str):
    """(imported module, names taken from it, line) of every import in a module."""
    tree = ast.parse(MODULES[name].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            target = resolve(name, node)
            names = [alias.name for alias in node.names]
            # `from . import ops` names a module; `from .ops import x` names x in ops
            submodules = [n for n in names if f"{target}.{n}" in MODULES or f"{target}.{n}" == EXTENSION]
            for sub in submodules:
                yield f"{target}.{sub}", [], node.lineno
            yield target, [n for n in names if n not in submodules], node.lineno


def internal(target: str) -> str:
    """The simper_rs Python module an import reaches, or '' (another package, or the extension)."""
    if target == EXTENSION:
        return ""
    while target and target not in MODULES:
        target = target.rsplit(".", 1)[0] if "." in target else ""
    return target


def graph():
    edges = defaultdict(set)
    for name in MODULES:
        for target, _, _ in imports(name):
            reached = internal(target)
            if reached and reached != name:
                edges[name].add(reached)
    return edges


def test_there_is_no_import_cycle():
    edges = graph()
    state, path = {}, []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(edges[node]):
            # a package's __init__ importing its own submodules is how packages work
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == "open":
                cycle = path[path.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for name in sorted(MODULES):
        if name not in state:
            visit(name)


def test_layers_import_only_downwards():
    wrong = [
        f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})"
        for name, targets in graph().items()
        for target in targets
        if layer(target) > layer(name) and not target.startswith(name + ".")
    ]
    assert not wrong, "\n".join(wrong)


def test_frameworks_only_in_the_integrations_and_the_command_line():
    wrong = [
        f"{name}:{line} imports {target}"
        for name in MODULES
        if layer(name) == 0
        for target, _, line in imports(name)
        if target.split(".")[0] in FRAMEWORKS
    ]
    assert not wrong, "\n".join(wrong)
    code = "import sys, simper_rs, simper_rs.numpy; print(sorted(m for m in %r if m in sys.modules))" % sorted(
        FRAMEWORKS
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"import simper_rs imported {out.stdout.strip()}"


def test_no_module_takes_another_modules_private_names():
    wrong = []
    for name in MODULES:
        tree = ast.parse(MODULES[name].read_text())
        module_aliases = {}
        for target, names, line in imports(name):
            reached = internal(target)
            if not reached or reached in PRIVATE_MODULES:
                continue
            wrong += [
                f"{name}:{line} imports {n} from {reached}"
                for n in names
                if n.startswith("_") and not n.startswith("__")
            ]
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    full = f"{resolve(name, node)}.{alias.name}"
                    if full in MODULES and full not in PRIVATE_MODULES:
                        module_aliases[alias.asname or alias.name] = full
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in module_aliases:
                if node.attr.startswith("_") and not node.attr.startswith("__"):
                    wrong.append(f"{name}:{node.lineno} reads {module_aliases[node.value.id]}.{node.attr}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    "planted, rule",
    [
        ({"simper_rs.ops": {"simper_rs.losses"}, "simper_rs.losses": {"simper_rs.ops"}}, "cycle"),
    ],
)
def test_the_cycle_check_finds_a_planted_cycle(planted, rule, monkeypatch):
    edges = defaultdict(set, {k: set(v) for k, v in planted.items()})
    monkeypatch.setattr(sys.modules[__name__], "graph", lambda: edges)
    with pytest.raises(AssertionError, match="import cycle: simper_rs.losses -> simper_rs.ops -> simper_rs.losses"):
        test_there_is_no_import_cycle()
