"""Layers point down, and every weight file is read by seesr.weights (issue 15).

cli/, web/ -> training/, evaluation/, pipeline/ (data/ beside it) -> weights/ -> models/, tagger/, degradations/
-> utils/. Each lower subpackage is imported alone in a fresh interpreter (every module of it), and its source is
scanned for imports (function-level ones included) of the packages above it.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import seesr

PACKAGE = Path(seesr.__file__).parent
ABOVE_WEIGHTS = ("pipeline", "training", "evaluation", "web", "cli", "data")
#: subpackage -> the seesr subpackages it must never import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "utils": ("models", "tagger", "degradations", "weights", *ABOVE_WEIGHTS),
    "models": ("weights", *ABOVE_WEIGHTS),
    "tagger": ("weights", *ABOVE_WEIGHTS),
    "degradations": ("weights", *ABOVE_WEIGHTS),
    "weights": ABOVE_WEIGHTS,
}
#: Calls that read a weight file; only seesr/weights may make them.
READ_CALLS = {("torch", "load"), ("safetensors.torch", "load_file"), ("safetensors", "safe_open")}

_IMPORT_ALL = """
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    importlib.import_module(info.name)
print(json.dumps(sorted(name for name in sys.modules if name.startswith("seesr."))))
"""


def _imported_seesr_packages(module: str) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL, module], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return {name.split(".")[1] for name in json.loads(result.stdout.strip().splitlines()[-1])}


def _static_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, function-level and relative ones resolved."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


@pytest.mark.parametrize("subpackage", sorted(FORBIDDEN))
def test_importing_a_layer_alone_loads_nothing_above_it(subpackage):
    loaded = _imported_seesr_packages(f"seesr.{subpackage}")
    assert not loaded & set(FORBIDDEN[subpackage]), (
        f"seesr.{subpackage} loads {sorted(loaded & set(FORBIDDEN[subpackage]))}"
    )


@pytest.mark.parametrize("subpackage", sorted(FORBIDDEN))
def test_no_import_climbs_a_layer(subpackage):
    climbing = [
        f"{path.relative_to(PACKAGE)}:{line} imports {module}"
        for path in sorted((PACKAGE / subpackage).rglob("*.py"))
        for line, module in _static_imports(path)
        if module.split(".")[:2] in [["seesr", above] for above in FORBIDDEN[subpackage]]
    ]
    assert not climbing, climbing


def _label(path: Path) -> str:
    return str(path.relative_to(PACKAGE)) if path.is_relative_to(PACKAGE) else path.name


def _read_calls(path: Path) -> list[str]:
    """Calls of torch.load / safetensors' load_file / safe_open in a file (by import alias or attribute)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    aliases: dict[str, tuple[str, str]] = {}  # local name -> (module, function)
    modules: dict[str, str] = {}  # local name -> module
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                aliases[alias.asname or alias.name] = (node.module, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                modules[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        function = node.func
        if isinstance(function, ast.Name) and aliases.get(function.id) in READ_CALLS:
            found.append(f"{_label(path)}:{node.lineno} {function.id}()")
        elif isinstance(function, ast.Attribute):
            owner = ast.unparse(function.value)
            module = modules.get(owner.split(".")[0], owner)
            full = module if "." not in owner else f"{module}.{owner.split('.', 1)[1]}"
            if (full, function.attr) in READ_CALLS or (owner, function.attr) in READ_CALLS:
                found.append(f"{_label(path)}:{node.lineno} {owner}.{function.attr}()")
    return found


def test_every_weight_file_is_read_by_seesr_weights():
    outside = [
        call
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] != "weights"
        for call in _read_calls(path)
    ]
    assert not outside, f"weight files read outside seesr/weights (use seesr.weights.reader): {outside}"


def test_the_read_scanner_finds_each_form(tmp_path):
    """The scanner above is not vacuous: each way of writing the calls is found."""
    sample = tmp_path / "probe.py"
    sample.write_text(
        "import torch\nimport safetensors.torch as st\nfrom safetensors import safe_open\n"
        "from safetensors.torch import load_file as lf\n"
        "torch.load('a')\nst.load_file('b')\nsafe_open('c', 'pt')\nlf('d')\n",
        encoding="utf-8",
    )
    assert len(_read_calls(sample)) == 4
