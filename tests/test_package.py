"""The package as a whole: what `import dali_kmix` loads, the public names, and its import graph."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "dali_kmix"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every dali_kmix module ``path`` imports, at any depth (imports inside functions count)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("dali_kmix")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("dali_kmix"):
                continue
            out.add(mod)
            for a in node.names:  # "from . import x" names a module when x is one
                if (PKG.parent / Path(*f"{mod}.{a.name}".split("."))).with_suffix(".py").is_file() or \
                        (PKG.parent / Path(*f"{mod}.{a.name}".split(".")) / "__init__.py").is_file():
                    out.add(f"{mod}.{a.name}")
    out.discard(name)
    return out


def _graph():
    return {_module_name(p): _imports(p) for p in PKG.rglob("*.py")}


def _parents(mod):
    parts = mod.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_no_module_imports_itself_back():
    graph = _graph()
    # importing a.b.c runs a/__init__ and a/b/__init__ first: those edges count too
    edges = {m: {t for d in deps for t in ({d} | _parents(d)) if t in graph and t != m} for m, deps in graph.items()}
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(edges[m]):
            if t in _parents(m):  # a module's own package is already importing when it runs
                continue
            if state.get(t) == "open":
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_the_library_never_imports_the_applications():
    for mod, deps in _graph().items():
        if mod.startswith("dali_kmix.apps"):
            continue
        assert not {d for d in deps if d.startswith("dali_kmix.apps")}, f"{mod} imports {deps}"


def test_import_loads_nothing_heavy():
    code = ("import sys, dali_kmix; heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'cupy', 'nvidia', 'cv2', 'matplotlib', 'scipy')); print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


@pytest.mark.parametrize("where,names", [
    ("dali_kmix", ["MixParams", "sample_params", "mix_images", "mix_labels", "nest_boxes", "sample_dirichlet"]),
    ("dali_kmix.record", ["MixParams", "area_weights"]),
    ("dali_kmix.sampling", ["sample_params", "sample_anchor_params", "params_from_draws", "draw_raw",
                            "sample_params_device"]),
    ("dali_kmix.backends", ["backend_for", "CpuBackend", "GpuBackend", "NumpyBackend", "gpu_available"]),
    ("dali_kmix.backends.plugin", ["load", "build"]),
    ("dali_kmix.saliency", ["salient_points", "spectral_residual"]),
    ("dali_kmix.dali", ["dmixup", "dcutmix", "saliency_dcutmix"]),
    ("dali_kmix.pipelines", ["imagenet_train_pipeline", "imagenet_val_pipeline", "DALIMixIterator", "MixPipeline"]),
    ("dali_kmix.torch", ["soft_target_cross_entropy", "sparse_mixed_cross_entropy", "one_hot_targets"]),
    ("dali_kmix.apps.data", ["make_photo_tree", "make_fashion_mnist_tree"]),
    ("dali_kmix.apps.train", ["TrainConfig", "train"]),
], ids=lambda v: v if isinstance(v, str) else None)
def test_public_names_import_from_where_the_readme_says(where, names):
    import importlib

    if where in ("dali_kmix.dali", "dali_kmix.pipelines", "dali_kmix.backends.plugin", "dali_kmix.apps.train"):
        pytest.importorskip("nvidia.dali")
    mod = importlib.import_module(where)
    for n in names:
        assert hasattr(mod, n), f"{where}.{n}"


# --------------------------------------------------------------------------- the tests' own references

TESTS = Path(__file__).resolve().parent


def _scope_nodes(node):
    """The nodes of ``node``'s own scope: everything below it except the bodies of nested functions and classes."""
    for child in ast.iter_child_nodes(node):
        yield child
        if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            yield from _scope_nodes(child)


def _module_references(tree):
    """``(line, dotted module name, [attr, ...])`` for every ``alias.attr...`` read where ``alias`` is bound by an
    import statement of the enclosing scopes (imports inside functions count, parameters and assignments shadow)."""
    found = []

    def visit(scope, bindings):
        local = dict(bindings)
        if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = scope.args
            for arg in a.posonlyargs + a.args + a.kwonlyargs + [x for x in (a.vararg, a.kwarg) if x]:
                local.pop(arg.arg, None)
        nodes = list(_scope_nodes(scope))
        for n in nodes:
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                local.pop(n.id, None)
        for n in nodes:
            if isinstance(n, ast.Import):
                for a in n.names:
                    local[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
            elif isinstance(n, ast.ImportFrom) and not n.level and n.module:
                for a in n.names:
                    local[a.asname or a.name] = f"{n.module}:{a.name}"  # a module or an attribute: resolved later
        parents = {c: p for p in nodes for c in ast.iter_child_nodes(p)}
        for n in nodes:
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in local:
                chain, top = [n.attr], n
                while isinstance(parents.get(top), ast.Attribute):
                    top = parents[top]
                    chain.append(top.attr)
                if not isinstance(top.ctx, ast.Load):
                    continue  # assigning an attribute (monkeypatching) may create it
                found.append((n.lineno, local[n.value.id], chain))
        for n in nodes:
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                visit(n, local)

    visit(tree, {})
    return found


def _resolve(binding):
    """The object an import binding names (``"pkg.mod"`` or ``"pkg.mod:name"``), or None if it cannot be imported."""
    import importlib

    mod, _, name = binding.partition(":")
    try:
        obj = importlib.import_module(mod)
        if name:
            try:
                return importlib.import_module(f"{mod}.{name}")
            except ImportError:
                return getattr(obj, name, None)
        return obj
    except Exception:  # noqa: BLE001 - not installed / cannot load here: the test that imports it skips
        return None


def test_every_module_attribute_the_tests_use_exists():
    # gpu-marked tests only run on a device; a call such as gpu_kernels.sample_params_device (a function of
    # dali_kmix.sampling) fails there with AttributeError. Here every `module.attr` the test files read is resolved
    # against the imported modules, down the chain while it names modules, without running anything.
    import importlib
    import re
    import types

    # the plugin's operators join nvidia.dali.fn when it is loaded: accept those its C++ source declares
    schemas = {re.sub(r"(?<!^)(?=[A-Z])", "_", m).lower()
               for f in (PKG.parent / "kernels").glob("*.cpp") for m in re.findall(r"DALI_SCHEMA\((\w+)\)", f.read_text())}
    missing = []
    cache = {}
    for path in sorted(TESTS.glob("*.py")):
        for line, binding, chain in _module_references(ast.parse(path.read_text())):
            if binding not in cache:
                cache[binding] = _resolve(binding)
            obj, name = cache[binding], binding.replace(":", ".")
            for attr in chain:
                if not isinstance(obj, types.ModuleType):
                    break
                if obj.__name__ == "nvidia.dali.fn" and attr in schemas:
                    break
                if not hasattr(obj, attr):
                    try:
                        importlib.import_module(f"{obj.__name__}.{attr}")
                    except ImportError:
                        missing.append(f"{path.name}:{line}: {name} has no attribute {attr!r}")
                        break
                obj, name = getattr(obj, attr), f"{name}.{attr}"
    assert not missing, "\n".join(missing)


def test_the_reference_check_sees_imports_in_functions_and_shadowing():
    src = ("import numpy as np\n"
           "def f():\n"
           "    from dali_kmix.backends import gpu as g\n"
           "    g.no_such_function(np.no_such_thing)\n"
           "def h(g):\n"
           "    return g.anything\n"
           "def k():\n"
           "    np = object()\n"
           "    return np.whatever\n")
    refs = {(b, tuple(c)) for _, b, c in _module_references(ast.parse(src))}
    assert refs == {("dali_kmix.backends:gpu", ("no_such_function",)), ("numpy", ("no_such_thing",))}


def test_the_tracked_tree_fits_beside_dali_on_a_gpu_machine():
    """A device call carries the working tree and DALI's pieces (three of at most 56 MiB) within 64 MiB: the
    tracked files must stay under 8 MiB (results are stored gzipped, benchmarks/README.md)."""

    root = Path(__file__).resolve().parent.parent
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, timeout=60)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    files = [root / name for name in listed.stdout.decode().split("\0") if name]
    total = sum(f.stat().st_size for f in files if f.is_file())
    biggest = sorted(files, key=lambda f: f.stat().st_size if f.is_file() else 0)[-3:]
    assert total < 8 * 2**20, f"{total / 2**20:.2f} MiB tracked; the largest: {[str(f) for f in biggest]}"
