"""The package's shape: layers that import downwards only, no hidden sibling imports, no
module too long to read, docs that match what the code writes."""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "dlrmlib"
MAX_MODULE_LINES = 520


def test_import_contracts_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint), "--config", str(REPO / "pyproject.toml")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def _local_sibling_imports(path: Path) -> list[str]:
    """Imports of dlrmlib modules inside functions whose line does not say why (`deferred`)."""
    lines = path.read_text().splitlines()
    found = []
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom) and (sub.level or (sub.module or "").startswith("dlrmlib")):
                    if "deferred" not in lines[sub.lineno - 1]:
                        found.append(f"{path.relative_to(REPO)}:{sub.lineno}: {lines[sub.lineno - 1].strip()}")
    return found


def test_no_function_local_sibling_imports_without_a_reason():
    found = [hit for path in sorted(PACKAGE.rglob("*.py")) for hit in _local_sibling_imports(path)]
    assert not found, "function-local imports of dlrmlib modules (hoist them, or say `# deferred: why`):\n" + \
        "\n".join(found)


def test_no_module_is_too_long_to_read():
    long = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_readme_is_a_guide():
    assert len((REPO / "README.md").read_text().splitlines()) <= 170


def _documented_manifest() -> dict:
    """The manifest example of docs/formats.md, as JSON (its "..." placeholders kept)."""
    text = (REPO / "docs" / "formats.md").read_text()
    block = re.search(r"## Manifest.*?```json\n(.*?)```", text, re.S).group(1)
    return json.loads(block)


def test_formats_doc_lists_the_fields_a_build_writes(tiny_build):
    from dlrmlib.formats.weights import read_manifest

    written = read_manifest(tiny_build.manifest)
    documented = _documented_manifest()
    assert set(documented) == set(written), "top-level manifest fields differ from docs/formats.md"
    assert set(documented["build"]) == set(written["build"]), "manifest `build` fields differ from docs/formats.md"
    for key in ("library", "weights", "embedding", "target", "precision"):
        assert set(documented[key]) == set(written[key]), f"manifest `{key}` fields differ from docs/formats.md"
    assert set(documented["params"][0]) == set(written["params"][0])


def test_formats_doc_names_the_experiment_folders_the_code_uses(tiny_experiment):
    from dlrmlib.core.experiment import Experiment

    text = (REPO / "docs" / "formats.md").read_text()
    exp = Experiment.open(tiny_experiment.name, root=tiny_experiment.root.parent)
    for path in (exp.params_path, exp.normalised_model, exp.testdata_dir, exp.weights_root, exp.tune_dir,
                 exp.builds_dir, exp.measurements_dir, exp.notebooks_dir, exp.figures_dir):
        assert str(path.relative_to(exp.root)) in text, f"docs/formats.md does not mention {path.name}"
