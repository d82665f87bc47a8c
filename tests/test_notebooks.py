"""The notebooks: thin, parameterised, committed without outputs, and they run under papermill."""
import ast
import json

import nbformat
import papermill
import pytest

from dlrmlib.cli.notebooks import NOTEBOOKS_DIR, run_notebook
from dlrmlib.core.experiment import Experiment
from dlrmlib.formats.tuning_log import count_records, tuning_log_dir

NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_are_stripped_and_parameterised(path):
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code"), \
        f"{path.name} has outputs: strip them before committing"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    assert "experiment: str =" in tagged[0].source
    # Every parameter is one papermill can see (it skips a line with two `=`, or an annotation
    # such as `bool | None`, with only a warning): `-p name value` would otherwise go unchecked.
    assigned = [t.id if isinstance(t, ast.Name) else t.target.id for t in ast.parse(tagged[0].source).body
                for t in ([t.target] if isinstance(t, ast.AnnAssign) else t.targets)]
    assert list(papermill.inspect_notebook(path)) == assigned, f"{path.name}: papermill cannot parse a parameter"
    # Thin: no function or class definitions, logic lives in dlrmlib.
    assert not any(line.startswith(("def ", "class ")) for c in nb.cells for line in c.source.splitlines())


def _outputs(path) -> str:
    return json.dumps([c.get("outputs", []) for c in nbformat.read(path, as_version=4).cells])


def test_setup_tune_and_build_notebooks_run_under_papermill(experiments_root, tmp_path):
    """01 -> 02 (a tiny budget) -> 03 in workflow order: 03 builds from both of 02's logs."""
    out = tmp_path / "executed"
    setup = run_notebook("01_setup", "nb-tiny", {"preset": "tiny", "batch_size": 8, "samples": 40}, output_dir=out)
    tune = run_notebook("02_tune", "nb-tiny", {"trials": 8, "kernel_seconds": 0.01}, output_dir=out)
    # one log: the run measures the interaction's knobs into it; the Dense layers' knobs are the first trials
    assert "default / best" in _outputs(tune) and "interaction_b8" in _outputs(tune)
    assert "dense_m8_k367_n64_relu" not in _outputs(tune) and "first trials:" in _outputs(tune)
    assert '"image/png"' in _outputs(tune), "the tuning curve is a picture, not a figure's repr"
    assert '"image/png"' in _outputs(setup), "the id-skew plot is a picture"
    assert (experiments_root / "nb-tiny" / "tune" / "prepack" / "kernels.jsonl").is_file()
    assert not (experiments_root / "nb-tiny" / "tune" / "custom").exists()
    build = run_notebook("03_build", "nb-tiny", {"instances": 1}, output_dir=out)
    text = _outputs(build)
    assert "python_vm_untuned" in text and "onnxruntime" in text
    assert "Dense layers from the MetaSchedule records of the hand-written space" in text
    assert "(interaction_b8" in text and "from the knob records of" in text
    # the tuned build is named after its log's records: the 8 trials and each Dense kernel's seed
    records = count_records(tuning_log_dir(Experiment.open("nb-tiny", root=experiments_root), prepack=True))
    assert records >= 8 and f"native_{records}_prepack" in text and "native_custom" in text, \
        "the tuned and custom builds run natively"
    assert "generated: preset tiny" in _outputs(setup)
    assert (experiments_root / "nb-tiny" / "builds" / "saved_model_untuned.so").is_file()
