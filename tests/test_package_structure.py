"""The package's shape, read from its source with `ast` (nothing is imported).

Import graph. Every `import` statement of a `keras_m3ae` module counts,
wherever it stands: at module level, inside a function (a "lazy" import),
under `if TYPE_CHECKING:`. A lazy import that closes a cycle still makes one
module need the other to be importable, only later. `import a.b.c` and
`from a.b.c import name` are edges to `a.b.c`, or to `a.b.c.name` when that
is a module; the parent packages that Python initialises on the way (every
module's import runs `keras_m3ae/__init__.py`) are not edges: they are how
packages work, not what a module asks for.

Private names. A name with one leading underscore is private to its module:
no other module imports it (`from m import _x`) or reaches it through an
imported module (`m._x`). A private module (`_name.py`) is private to its
package: only modules of the same folder import it (the package's
`__init__.py` among them).

"Where things are". `docs/architecture.md` and `README.md` each have a
`## Where things are` section (up to the next `## ` heading) holding the
package tree in a fenced code block, with these conventions:

- a line whose first word ends in `/` is a folder entry; its indentation
  places it under the nearest folder line above it that is indented less
  (`keras_m3ae/` at the left margin is the root); `models/m3ae/` names both
  folders;
- naming a folder names its package's `__init__.py`;
- every `name.py` written on a line belongs to the nearest folder entry
  above that line which is indented less than the line (or to the folder
  the line itself opens);
- every `.py` file under `keras_m3ae/` is named in its folder's entry, and
  everything named under `keras_m3ae/` exists.
"""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = "keras_m3ae"

pytestmark = pytest.mark.backend_independent


def package_modules(root=ROOT):
    """`{dotted name: (path, is_package)}` of every module of the package."""
    modules = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_package)
    return modules


def _absolute(module, is_package, node):
    """The module an `ImportFrom` names, relative imports resolved."""
    if not node.level:
        return node.module
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _in_package(name):
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def import_graph(modules):
    """`{module: {imported module: [line numbers]}}`, and the private-name uses.

    Returns:
        `(edges, private)`: `private` lists `(module, line, what)` for every
        import of another module's private name or private module, and every
        `module._name` reached through an imported package module.
    """
    edges, private = {}, []
    for module, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        out = edges.setdefault(module, {})
        aliases = {}  # local name -> package module it is bound to
        folder = module if is_package else module.rpartition(".")[0]

        def add(target, line):
            out.setdefault(target, []).append(line)
            owner, _, last = target.rpartition(".")
            if last.startswith("_") and not last.startswith("__") and owner != folder:
                private.append((module, line, f"private module {target}"))

        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if _in_package(alias.name):
                        add(alias.name, node.lineno)
                        if alias.asname:
                            aliases[alias.asname] = alias.name
                        else:
                            aliases[alias.name.split(".")[0]] = PACKAGE
            elif isinstance(node, ast.ImportFrom):
                source = _absolute(module, is_package, node)
                if not source or not _in_package(source):
                    continue
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    if submodule in modules:
                        add(submodule, node.lineno)
                        aliases[alias.asname or alias.name] = submodule
                        continue
                    add(source, node.lineno)
                    if (alias.name.startswith("_") and not alias.name.startswith("__")
                            and source != module):
                        private.append((module, node.lineno, f"{source}.{alias.name}"))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                continue
            value, dotted = node.value, []
            while isinstance(value, ast.Attribute):
                dotted.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in aliases:
                owner = ".".join([aliases[value.id]] + dotted[::-1])
                if owner != module and owner in modules:
                    private.append((module, node.lineno, f"{owner}.{node.attr}"))
    return edges, private


def import_cycles(edges):
    """Every strongly connected group of two or more modules (or a self-import)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, {}):
            if target not in edges:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1 or node in edges[node]:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def test_no_import_cycle():
    edges, _ = import_graph(package_modules())
    cycles = import_cycles(edges)
    described = []
    for group in cycles:
        members = set(group)
        described.append("\n".join(
            f"  {source} -> {target} (line {', '.join(map(str, edges[source][target]))})"
            for source in group for target in sorted(edges[source]) if target in members
        ))
    assert not cycles, "import cycles:\n" + "\n\n".join(described)


def test_no_module_imports_another_modules_private_names():
    _, private = import_graph(package_modules())
    assert not private, "\n".join(f"{module}:{line} uses {what}" for module, line, what in private)


def test_the_checks_find_what_they_look_for(tmp_path):
    # The walkers themselves, on a small package with one of each problem.
    package = tmp_path / PACKAGE
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from keras_m3ae import a\nfrom keras_m3ae import _hidden\n")
    (package / "_hidden.py").write_text("")
    (package / "a.py").write_text("from keras_m3ae.sub import b\n")
    (package / "sub" / "__init__.py").write_text("from keras_m3ae import _hidden as h\n")
    (package / "sub" / "b.py").write_text(
        "from . import c\n\ndef f():\n    from keras_m3ae import a\n    return a._x\n")
    (package / "sub" / "c.py").write_text(
        "import keras_m3ae._hidden\nfrom keras_m3ae.a import _y\n")
    modules = package_modules(tmp_path)
    edges, private = import_graph(modules)
    assert edges["keras_m3ae.sub.b"] == {"keras_m3ae.sub.c": [1], "keras_m3ae.a": [4]}
    assert import_cycles(edges) == [["keras_m3ae.a", "keras_m3ae.sub.b", "keras_m3ae.sub.c"]]
    assert sorted((m, what) for m, _, what in private) == [
        ("keras_m3ae.sub", "private module keras_m3ae._hidden"),
        ("keras_m3ae.sub.b", "keras_m3ae.a._x"),
        ("keras_m3ae.sub.c", "keras_m3ae.a._y"),
        ("keras_m3ae.sub.c", "private module keras_m3ae._hidden"),
    ]


# --- "Where things are" ---

_HEADING = "## Where things are"
_MODULE = re.compile(r"(?<![\w./])([A-Za-z_]\w*\.py)\b")


def where_things_are(text):
    """The `## Where things are` section's tree: `{folder path: {module file names}}`.

    Folder paths are relative to the repository root and end in `/`; see the
    conventions in this file's docstring.
    """
    if _HEADING not in text:
        raise AssertionError(f"no `{_HEADING}` section")
    section = text.split(_HEADING, 1)[1]
    section = re.split(r"^## ", section, maxsplit=1, flags=re.M)[0]
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", section, flags=re.M | re.S)
    tree = {}
    for block in blocks:
        stack = []  # (indent, folder path)
        for line in block.splitlines():
            if not line.strip():
                continue
            indent = len(line) - len(line.lstrip())
            while stack and stack[-1][0] >= indent:
                stack.pop()
            first = line.split()[0].strip("`")
            rest = line
            if first.endswith("/"):
                parent = stack[-1][1] if stack else ""
                folder = parent + first
                prefix = parent
                for part in first.strip("/").split("/"):
                    prefix += part + "/"
                    names = tree.setdefault(prefix, set())
                    names.add("__init__.py")
                stack.append((indent, folder))
                rest = line.split(first, 1)[1] if first in line else line
                owner = folder
            else:
                owner = stack[-1][1] if stack else ""
            for name in _MODULE.findall(rest):
                tree.setdefault(owner, set()).add(name)
    return tree


def package_tree(root=ROOT):
    """`{folder path: {module file names}}` of the package as it is on disk."""
    tree = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        folder = path.parent.relative_to(root).as_posix() + "/"
        tree.setdefault(folder, set()).add(path.name)
    return tree


def _differences(documented, actual):
    documented = {k: v for k, v in documented.items() if k.startswith(PACKAGE + "/")}
    problems = []
    for folder in sorted(set(actual) | set(documented)):
        missing = actual.get(folder, set()) - documented.get(folder, set())
        stale = documented.get(folder, set()) - actual.get(folder, set())
        if folder not in actual:
            problems.append(f"{folder} is documented but is not a package folder")
            continue
        if missing:
            problems.append(f"{folder}: not named: {', '.join(sorted(missing))}")
        if stale:
            problems.append(f"{folder}: named but absent: {', '.join(sorted(stale))}")
    return problems


@pytest.mark.parametrize("document", ["docs/architecture.md", "README.md"])
def test_where_things_are_names_every_module(document):
    documented = where_things_are((ROOT / document).read_text())
    problems = _differences(documented, package_tree())
    assert not problems, f"{document}, section `{_HEADING}`:\n" + "\n".join(problems)


def test_where_things_are_reading(tmp_path):
    text = (
        "# Title\n\n## Where things are\n\n```\n"
        "keras_m3ae/\n"
        "  a.py        one; mentions b.py in passing\n"
        "  data/       batching.py (batch), writer.py\n"
        "              checks.py\n"
        "  models/m3ae/ backbone.py\n"
        "  losses.py   the loss\n"
        "tests/        numpy_reference.py\n"
        "```\n\n## Next\n\n```\nkeras_m3ae/\n  ignored.py\n```\n"
    )
    assert where_things_are(text) == {
        "keras_m3ae/": {"__init__.py", "a.py", "b.py", "losses.py"},
        "keras_m3ae/data/": {"__init__.py", "batching.py", "writer.py", "checks.py"},
        "keras_m3ae/models/": {"__init__.py"},
        "keras_m3ae/models/m3ae/": {"__init__.py", "backbone.py"},
        "tests/": {"__init__.py", "numpy_reference.py"},
    }
    package = tmp_path / PACKAGE
    (package / "data").mkdir(parents=True)
    for name in ("__init__.py", "a.py", "data/__init__.py", "data/batching.py", "data/extra.py"):
        (package / name).write_text("")
    assert _differences(where_things_are(text), package_tree(tmp_path)) == [
        "keras_m3ae/: named but absent: b.py, losses.py",
        "keras_m3ae/data/: not named: extra.py",
        "keras_m3ae/data/: named but absent: checks.py, writer.py",
        "keras_m3ae/models/ is documented but is not a package folder",
        "keras_m3ae/models/m3ae/ is documented but is not a package folder",
    ]
