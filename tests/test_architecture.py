"""The shape of the house (issue 20): no import cycle among seqba's modules, and no task family named in code
outside seqba/tasks/ and seqba/data/ (docstrings and comments may name them; code may not switch on them)."""
import ast
from pathlib import Path

SEQBA = Path(__file__).resolve().parents[1] / "seqba"
FAMILIES = {"translation", "language_modeling", "image_classification"}
TASK_CLASSES = {"TranslationTask", "LanguageModelingTask", "ImageClassificationTask"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in SEQBA.rglob("*.py"):
        parts = path.relative_to(SEQBA.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """seqba modules imported anywhere in the file (module level, functions, TYPE_CHECKING blocks)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found.update(n for n in names if n in modules)
    return found


def test_no_import_cycle():
    modules = _modules()
    graph = {m: _imports(p, modules) - {m} for m, p in modules.items()}
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(dep):] + [module, dep]))
            if dep not in state:
                visit(dep, path + [module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def test_no_task_family_named_outside_its_rooms():
    offenders = []
    for path in sorted(SEQBA.rglob("*.py")):
        if path.relative_to(SEQBA).parts[0] in ("tasks", "data"):
            continue
        tree = ast.parse(path.read_text())
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            named = (isinstance(node, ast.Constant) and node.value in FAMILIES and id(node) not in docs) or (
                isinstance(node, (ast.Name, ast.Attribute, ast.alias))
                and (getattr(node, "id", None) or getattr(node, "attr", None) or getattr(node, "name", "")) in TASK_CLASSES)
            if named:
                offenders.append(f"{path.relative_to(SEQBA.parent)}:{getattr(node, 'lineno', '?')}")
    assert not offenders, f"task families named in code outside seqba/tasks and seqba/data: {offenders}"
