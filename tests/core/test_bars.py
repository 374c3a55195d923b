"""The size bars of issue #25.3 and the import graph, read from the source with ``ast``.

In ``bridge/``: no file over 600 lines, no class over 30 methods, no function over 50
lines (its ``def`` to its last line, decorators aside). The import graph of ``bridge/``
(every import a module makes, at its top and inside functions alike, through the
bridge's own modules) has no cycle; nor has that of ``bench/`` (its modules import each
other by their bare names: ``bench/`` is on ``sys.path`` when they run).
"""

import ast
import os

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BRIDGE = os.path.join(REPO, "bridge")
BENCH = os.path.join(REPO, "bench")

MAX_FILE_LINES = 600
MAX_CLASS_METHODS = 30
MAX_FUNCTION_LINES = 50


def sources(folder):
    """(path relative to the repository, parsed tree, line count) of every module."""
    for here, _, names in os.walk(folder):
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(here, name)
                with open(path) as handle:
                    text = handle.read()
                yield os.path.relpath(path, REPO), ast.parse(text, path), len(text.splitlines())


def test_no_file_in_bridge_is_over_600_lines():
    over = {path: lines for path, _, lines in sources(BRIDGE) if lines > MAX_FILE_LINES}
    assert over == {}


def test_no_class_in_bridge_has_over_30_methods():
    over = {}
    for path, tree, _ in sources(BRIDGE):
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                methods = [item for item in node.body
                           if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))]
                if len(methods) > MAX_CLASS_METHODS:
                    over["%s:%s" % (path, node.name)] = len(methods)
    assert over == {}


def test_no_function_in_bridge_is_over_50_lines():
    over = {}
    for path, tree, _ in sources(BRIDGE):
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    over["%s:%s:%d" % (path, node.name, node.lineno)] = lines
    assert over == {}


def test_the_bars_are_measured_on_the_real_tree():
    """Not vacuous: the walk finds the bridge's modules, classes and long functions."""
    found = list(sources(BRIDGE))
    assert len(found) > 100
    longest = max(node.end_lineno - node.lineno + 1 for _, tree, _ in found
                  for node in ast.walk(tree) if isinstance(node, ast.FunctionDef))
    assert 30 < longest <= MAX_FUNCTION_LINES


def bridge_module(path):
    """``bridge/glue/bridge.py`` -> ``bridge.glue.bridge``; a package is its ``__init__``."""
    parts = os.path.splitext(path)[0].split(os.sep)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def bridge_graph():
    """Module -> the bridge modules it imports (anywhere in it)."""
    trees = {bridge_module(path): (tree, path.endswith("__init__.py"))
             for path, tree, _ in sources(BRIDGE)}
    graph = {}
    for module, (tree, package) in trees.items():
        here = module if package else module.rpartition(".")[0]
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                for alias in node.names:
                    name = base + "." + alias.name
                    targets.add(name if name in trees else base)
        graph[module] = {target for target in targets if target in trees and target != module}
    return graph


def bench_graph():
    trees = {os.path.splitext(os.path.basename(path))[0]: tree
             for path, tree, _ in sources(BENCH)}
    graph = {}
    for module, tree in trees.items():
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                targets.add(node.module)
        graph[module] = {target for target in targets if target in trees and target != module}
    return graph


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle_and_only_that():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycle_through_the_core():
    assert [cycle for cycle in cycles(bridge_graph())
            if any(module.startswith("bridge.core") for module in cycle)] == []


def test_no_import_cycle_in_bridge():
    graph = bridge_graph()
    assert len(graph) > 100 and graph["bridge.service"]  # the graph is the real one
    assert cycles(graph) == []


def test_no_import_cycle_in_bench():
    graph = bench_graph()
    assert "saturation" in graph["run"] and "saturation" in graph["dtlsrun"]
    assert cycles(graph) == []
