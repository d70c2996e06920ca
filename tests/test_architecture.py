"""The package's import rules, checked on its import graph (read from the source, nothing imported).

Every ``import`` of a ``recommender`` module counts, at module level or inside a function (a lazy
import is still a dependency), except those under ``if TYPE_CHECKING:`` (annotations only). A failure
names the modules and the rule. One more rule reads only the file names: no two modules share a name
for different things.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "recommender"

# Top to bottom: a module may import from its own layer and the layers below it, never above.
LAYERS: list[set[str]] = [
    {"cli"},
    {"service"},
    {"retraining", "batch"},
    {"settings", "cores"},
    {"active", "agreement", "corpora", "guidelines", "model_versions", "store"},
    {"extractors"},
    {"evaluation"},
    {"formats", "progress", "splits", "synthetic"},
    {"markup_language"},
    {"text"},
    {"", "document", "errors", "packaged", "schema"},  # "": the package's own __init__
]
# The format modules convert at the edge: the document model and what it is built on, nothing else.
FORMATS_MAY_IMPORT = {"formats", "document", "schema", "errors", "markup_language", "text"}
# Imports of these third-party packages are refused in these parts of the package.
FORBIDDEN_THIRD_PARTY = {"service": {"torch"}}
# The one module that reads the environment (KIWI_* through the Settings class).
READS_ENVIRONMENT = "recommender.settings"
# Two modules (or packages) share a name only when they are the same kind of thing in parallel places:
# every extractor family's folder has the same shape (extractors/encoder/, extractors/llama/), and
# extractors/card.py is what the families' model cards share. Besides these, ``cli/NAME.py`` is the
# command ``kiwi NAME`` and may be named as what it runs (cli/simulate.py runs active/simulate.py).
SHARED_NAMES = {name: "extractors" for name in ("card", "config", "extractor", "training")}


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package at ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
            else:
                stack.append(child)


def imports(name: str, path: Path) -> set[str]:
    """The absolute names ``name`` imports: ``from a import b`` gives ``a.b``, which ``graph`` resolves to
    its longest prefix that is a module (``a.b`` when ``b`` is a module, else ``a``), as grimp does."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            out |= {f"{base}.{a.name}" for a in node.names}  # a module, else a name in ``base``
    return out


def graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    mods = modules(root)
    out = {}
    for name, path in mods.items():
        deps = set()
        for imported in imports(name, path):
            while imported and imported not in mods:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                deps.add(imported)
        out[name] = deps
    return out


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def area(module: str) -> str:
    """The first name below the package: ``recommender.formats.xmi`` -> ``formats``; the package
    itself -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_of(module: str) -> int:
    for i, names in enumerate(LAYERS):
        if area(module) in names:
            return i
    raise AssertionError(f"module [{module}] is in no layer: add [{area(module)}] to LAYERS")


def layer_violations(edges: dict[str, set[str]]) -> list[str]:
    return [
        f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)}, above it)"
        for m, deps in sorted(edges.items())
        for d in sorted(deps)
        if layer_of(d) < layer_of(m)
    ]


def formats_violations(edges: dict[str, set[str]]) -> list[str]:
    return [
        f"{m} imports {d}; formats may import only {sorted(FORMATS_MAY_IMPORT)}"
        for m, deps in sorted(edges.items())
        if area(m) == "formats"
        for d in sorted(deps)
        if area(d) not in FORMATS_MAY_IMPORT
    ]


def third_party_violations(root: Path) -> list[str]:
    out = []
    for name, path in modules(root).items():
        refused = FORBIDDEN_THIRD_PARTY.get(area(name), set())
        for imported in sorted(imports(name, path)):
            if imported.split(".")[0] in refused:
                out.append(f"{name} imports {imported} (refused in recommender.{area(name)})")
    return out


def _reads_environment(node: ast.AST, parent: ast.AST | None) -> bool:
    """``os.getenv``/``os.putenv``, or ``os.environ`` used other than to set variables for this process
    and its children (``os.environ.update(...)``, ``os.environ[KEY] = ...``)."""
    if isinstance(node, ast.Attribute) and node.attr in ("getenv", "getenvb"):
        return True
    if isinstance(node, ast.ImportFrom) and node.module == "os":
        return bool({a.name for a in node.names} & {"environ", "getenv", "environb"})
    if not (isinstance(node, ast.Attribute) and node.attr in ("environ", "environb")):
        return False
    writes = (isinstance(parent, ast.Attribute) and parent.attr == "update") or (
        isinstance(parent, ast.Subscript) and isinstance(parent.ctx, ast.Store | ast.Del)
    )
    return not writes


def environment_readers(root: Path) -> list[str]:
    """Modules other than settings that read the environment."""
    out = []
    for name, path in modules(root).items():
        if name == READS_ENVIRONMENT:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if _reads_environment(node, parents.get(node)):
                out.append(
                    f"{name} line {node.lineno}: reads the environment (only {READS_ENVIRONMENT} does)"
                )
    return out


def cli_commands(root: Path) -> set[str]:
    """The ``kiwi`` commands: the keys of ``COMMANDS`` in the CLI package (read, not imported)."""
    for node in ast.parse((root / "cli" / "__init__.py").read_text(encoding="utf-8")).body:
        if (
            isinstance(node, ast.AnnAssign)
            and ast.unparse(node.target) == "COMMANDS"
            and isinstance(node.value, ast.Dict)
        ):
            return {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
    return set()


def shared_names(root: Path) -> list[str]:
    """Names held by more than one module or package, other than the parallel ones allowed above."""
    commands = cli_commands(root) if (root / "cli" / "__init__.py").is_file() else set()
    holders: dict[str, list[str]] = {}
    for name in modules(root):
        if "." in name:
            holders.setdefault(name.rpartition(".")[2], []).append(name)
    out = []
    for short, names in sorted(holders.items()):
        if short in commands:
            names = [n for n in names if n != f"{root.name}.cli.{short}"]
        allowed = SHARED_NAMES.get(short)
        if len(names) < 2 or (allowed and all(area(n) == allowed for n in names)):
            continue
        out.append(f"[{short}] names {len(names)} modules: {', '.join(names)}")
    return out


# --- the rules --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def edges() -> dict[str, set[str]]:
    return graph(PACKAGE)


def test_no_import_cycles(edges: dict[str, set[str]]) -> None:
    found = cycles(edges)
    assert not found, "import cycles among the package's modules: " + "; ".join(
        " <-> ".join(c) for c in found
    )


def test_the_layers_point_down(edges: dict[str, set[str]]) -> None:
    assert set(edges) and all(layer_of(m) >= 0 for m in edges)  # every module has a layer
    problems = layer_violations(edges)
    assert not problems, "imports that point up the layers:\n" + "\n".join(problems)


def test_formats_import_only_the_document_model_and_below(edges: dict[str, set[str]]) -> None:
    problems = formats_violations(edges)
    assert not problems, "\n".join(problems)


def test_the_service_imports_no_torch() -> None:
    problems = third_party_violations(PACKAGE)
    assert not problems, "\n".join(problems)


def test_only_settings_reads_the_environment() -> None:
    problems = environment_readers(PACKAGE)
    assert not problems, "\n".join(problems)


def test_no_two_modules_share_a_name_for_different_things() -> None:
    problems = shared_names(PACKAGE)
    assert not problems, "rename one so that each name says what it is (or, for parallel modules, add "
    "them to SHARED_NAMES with the reason):\n" + "\n".join(problems)


# --- the checker finds what it must -----------------------------------------------------------------
def test_the_checks_catch_a_cycle_an_upward_import_and_torch_in_the_service(tmp_path: Path) -> None:
    root = tmp_path / "recommender"
    files = {
        "__init__.py": "",
        "formats/__init__.py": "",
        "formats/a.py": "from recommender.service.b import x\n",
        "service/__init__.py": "",
        "service/b.py": "import torch\nfrom recommender.formats import a\n",
        "text.py": "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from recommender.service import b\n",
        "document.py": "import os\nos.environ.get('X')\n"
        "os.environ.update({'Y': '1'})\nos.environ['Z'] = '2'\n",  # setting variables is no reading
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    edges = graph(root)
    assert cycles(edges) == [["recommender.formats.a", "recommender.service.b"]]
    assert "recommender.service.b" not in edges["recommender.text"], "annotation-only imports do not count"
    assert layer_violations(edges) == [
        "recommender.formats.a (layer 7) imports recommender.service.b (layer 1, above it)"
    ]
    assert formats_violations(edges) == [
        "recommender.formats.a imports recommender.service.b; formats may import only "
        + str(sorted(FORMATS_MAY_IMPORT))
    ]
    assert third_party_violations(root) == [
        "recommender.service.b imports torch (refused in recommender.service)"
    ]
    assert environment_readers(root) == [
        "recommender.document line 2: reads the environment (only recommender.settings does)"
    ]


def test_the_name_check_allows_only_parallel_modules(tmp_path: Path) -> None:
    root = tmp_path / "recommender"
    files = [
        "__init__.py",
        "markup.py",
        "formats/__init__.py",
        "formats/markup.py",  # a file format named as the language beside it: refused
        "cli/__init__.py",
        "cli/simulate.py",  # the command kiwi simulate, named as what it runs: allowed
        "cli/report.py",  # no such command
        "active/__init__.py",
        "active/simulate.py",
        "active/report.py",
        "extractors/__init__.py",
        "extractors/card.py",  # the families' shared card and each family's own: allowed
        "extractors/encoder/__init__.py",
        "extractors/encoder/card.py",
        "extractors/llama/__init__.py",
        "extractors/llama/card.py",
        "service/__init__.py",
        "service/card.py",  # a card outside the families: refused
    ]
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("", encoding="utf-8")
    (root / "cli" / "__init__.py").write_text(
        'COMMANDS: dict[str, str] = {"simulate": "recommender.cli.simulate"}\n', encoding="utf-8"
    )
    assert shared_names(root) == [
        "[card] names 4 modules: recommender.extractors.card, recommender.extractors.encoder.card, "
        "recommender.extractors.llama.card, recommender.service.card",
        "[markup] names 2 modules: recommender.formats.markup, recommender.markup",
        "[report] names 2 modules: recommender.active.report, recommender.cli.report",
    ]
