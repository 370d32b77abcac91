"""The library never imports the applications (CLI, training, server), and inside the library
dependencies point one way: foundation -> layers -> losses / models -> loader, objectives, data,
index, eval -> the package root. A lazy import inside a function counts like any other."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import vlmkit

APPS = ("vlmkit_cli", "vlmkit_train", "vlmkit_server")


def test_library_source_never_imports_applications():
    root = Path(vlmkit.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.relative_to(root)}: {n}" for n in names if n.split(".")[0] in APPS]
    assert offenders == []


#: Modules every part of the library may use: errors, images, version, shipped data files, the
#: process-group helpers, message parsing, shared prompts, where checkpoints come from, and writing
#: a folder all at once.
FOUNDATION = {"errors", "images", "version", "resources", "distributed", "chat", "prompts", "hub", "files"}
#: Each part of ``vlmkit`` (a top-level module or subpackage) and the parts it may import besides
#: itself and the foundation. Losses take tensors, never models; models never import a loss, the
#: loader, data readers or evaluation.
ALLOWED = {
    **{name: set() for name in FOUNDATION},
    "layers": set(),
    "losses": {"layers"},
    "models": {"layers"},
    "loading": {"models"},
    "objectives": {"layers", "losses", "models"},
    "data": set(),
    "feature_cache": {"models"},
    "index": set(),
    "captioning": {"index", "models"},
    "interrogate": {"models", "loading"},
    "bootstrap": {"captioning", "data", "index", "models", "loading"},
    "eval": {"data", "models", "loading"},
    "onnx_export": {"layers", "models"},  # towers of loaded models -> ONNX graphs for models/onnx.py
    "testing": {"models"},  # tiny checkpoints for tests and benches; no other part imports it
}
#: Known exceptions, each with the reason it is still here (none today).
EXCEPTIONS: set[tuple[str, str]] = set()


def _library_imports() -> dict[str, set[str]]:
    """Every library module -> the library modules it imports (module level or inside functions)."""
    root = Path(vlmkit.__file__).parent

    def name_of(path: Path) -> str:
        parts = ["vlmkit", *path.relative_to(root).with_suffix("").parts]
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {name_of(p): p for p in root.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                subs = {f"{base}.{alias.name}" for alias in node.names}
                found |= (subs & set(modules)) or {base}
        edges[name] = {m for m in found if m in modules and m != name}
    return edges


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def test_library_layers_point_one_way():
    offenders = sorted(
        f"{module} -> {target}"
        for module, targets in _library_imports().items()
        for target in targets
        if _part(module) != "(root)"
        and _part(target) not in ALLOWED[_part(module)] | FOUNDATION | {_part(module)}
        and (module, target) not in EXCEPTIONS
    )
    assert offenders == []
    assert set(ALLOWED) == {_part(m) for m in _library_imports()} - {"(root)"}  # every part has a rule


def test_no_import_cycles_in_the_library():
    edges = _library_imports()
    cycles, index, low, stack, on_stack = [], {}, {}, [], set()

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in edges[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in edges:
        if module not in index:
            visit(module)
    assert cycles == []


BENCH = Path(__file__).resolve().parents[1] / "bench"
#: What a bench script must not import: the test suite's modules (tests/ is no package; a bench that
#: needs a tiny checkpoint or tokenizer takes it from ``vlmkit.testing``).
TEST_MODULES = {"tests", "conftest", "tiny_checkpoints"} | {p.stem for p in Path(__file__).parent.glob("*.py")}


def _top_level_imports(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return [name.split(".")[0] for name in names]


def test_benches_never_import_the_tests():
    offenders = []
    for path in sorted(BENCH.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        offenders += [f"{path.name}: imports {n}" for n in _top_level_imports(tree) if n in TEST_MODULES]
        offenders += [
            f"{path.name}: puts tests/ on the path"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value == "tests"
        ]
    assert offenders == []


#: Bench scripts that run other bench scripts, each with the reason (the rest share code only
#: through the helper modules ``bench/_*.py``).
BENCH_DRIVERS = {"recipes_table": "runs the recipe benches whose figures it puts in one table"}


def test_bench_scripts_share_code_through_helper_modules_only():
    scripts = {p.stem for p in BENCH.glob("*.py") if not p.name.startswith("_")}
    offenders = []
    for path in sorted(BENCH.glob("*.py")):
        if path.stem in BENCH_DRIVERS:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        offenders += [f"{path.name}: imports {n}" for n in _top_level_imports(tree) if n in scripts]
        offenders += [  # importing by path counts too
            f"{path.name}: loads {node.value}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in {f"{s}.py" for s in scripts}
        ]
    assert offenders == []
    assert set(BENCH_DRIVERS) <= scripts


def test_importing_the_library_is_light():
    code = "import sys, vlmkit; print(sorted(m for m in sys.modules if m.split('.')[0] in ('vlmkit_cli', 'transformers')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_public_api():
    for name in vlmkit.__all__:
        assert hasattr(vlmkit, name), name
    names = [info.name for info in vlmkit.list_models()]
    assert names[0] == vlmkit.DEFAULT_MODEL
    assert "openai/clip-vit-base-patch32" in names and "llava-hf/llava-1.5-7b-hf" in names
