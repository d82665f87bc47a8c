"""The notebooks: thin, parameterised, committed without outputs, and they run under papermill."""
import json

import nbformat
import pytest

from dlrmlib.notebooks import NOTEBOOKS_DIR, run_notebook

NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_are_stripped_and_parameterised(path):
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code"), \
        f"{path.name} has outputs: strip them before committing"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    assert "experiment: str =" in tagged[0].source
    # Thin: no function or class definitions, logic lives in dlrmlib.
    assert not any(line.startswith(("def ", "class ")) for c in nb.cells for line in c.source.splitlines())


def test_setup_and_build_notebooks_run_under_papermill(experiments_root, tmp_path):
    out = tmp_path / "executed"
    setup = run_notebook("01_setup", "nb-tiny", {"preset": "tiny", "batch_size": 8, "samples": 40}, output_dir=out)
    build = run_notebook("03_build", "nb-tiny", {"instances": 1}, output_dir=out)
    executed = nbformat.read(build, as_version=4)
    text = json.dumps([c.get("outputs", []) for c in executed.cells])
    assert "python_vm_untuned" in text and "native_untuned" in text and "onnxruntime" in text
    assert "generated: preset tiny" in json.dumps([c.get("outputs", []) for c in nbformat.read(setup, 4).cells])
    assert (experiments_root / "nb-tiny" / "builds" / "saved_model_untuned.so").is_file()
