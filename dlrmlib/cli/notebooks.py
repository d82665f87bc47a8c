"""Run the workflow's notebooks headless with papermill, into the experiment's folder."""
from __future__ import annotations

import sys
from pathlib import Path

from dlrmlib.core.errors import DlrmError
from dlrmlib.core.experiment import Experiment
from dlrmlib.core.machine import precision_isa
from dlrmlib.core.paths import REPO_ROOT
from dlrmlib.reporting.headline import headline_table, unmeasured_notes
from dlrmlib.reporting.report import render_report
from dlrmlib.reporting.tables import measurements_table

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
WORKFLOW = ("01_setup", "02_tune", "03_build", "04_profile", "05_report")  # in workflow order
DEMO_TRIALS = 64  # the demo's tuning budget: minutes, not hours (CI=true: fewer, dlrmlib.tuning.metaschedule.ci_trials)
DEMO_BATCHES = [1, 16, 128, 256, 2048]  # custom kernels built and every runtime measured at these (each build: seconds)


def kernel_config():
    """The notebook kernels' settings: ZeroMQ traffic between this process and the kernel
    encrypted with CurveZMQ keys the kernel manager provisions (the kernel otherwise warns, at
    every start, that it runs over TCP without encryption)."""
    from traitlets.config import Config

    return Config({"KernelManager": {"transport_encryption": "auto"}})


def run_notebook(name: str, experiment: str, parameters: dict | None = None,
                 output_dir: Path | None = None, log_output: bool = False) -> Path:
    """Execute `notebooks/<name>.ipynb` with the parameters; the executed copy lands in the
    experiment's `notebooks/` folder (or `output_dir`). Raises DlrmError if a cell fails."""
    import papermill

    source = NOTEBOOKS_DIR / f"{name}.ipynb"
    if not source.is_file():
        raise DlrmError(f"notebook not found: {source}")
    params = {"experiment": experiment, **(parameters or {})}
    if output_dir is None:
        exp = Experiment.open(experiment, create=True)
        output_dir = exp.notebooks_dir
    output_dir.mkdir(parents=True, exist_ok=True)  # papermill does not create it
    output = output_dir / f"{name}.ipynb"
    try:
        papermill.execute_notebook(str(source), str(output), parameters=params, cwd=str(NOTEBOOKS_DIR),
                                   progress_bar=sys.stderr.isatty(), log_output=log_output, config=kernel_config())
    except papermill.PapermillExecutionError as e:
        raise DlrmError(f"notebook {name} failed in cell {e.exec_count}: {e.ename}: {e.evalue} "
                        f"(executed copy: {output})") from None
    return output


def demo_parameters(name: str, preset: str, batch_size: int, samples: int) -> dict:
    """Each notebook's parameters in the demo: a small tuning budget, the custom kernels built
    and every runtime measured at DEMO_BATCHES (and the experiment's batch size), and int8
    builds beside fp32 at each of them where the CPU has the instructions (the peers run at their
    best precision too)."""
    batches = sorted({*DEMO_BATCHES, batch_size})
    precision = "int8" if precision_isa("int8") else "fp32"
    return {"01_setup": {"preset": preset, "batch_size": batch_size, "samples": samples},
            "02_tune": {"trials": DEMO_TRIALS}, "03_build": {"batch_sizes": batches, "precision": precision},
            "04_profile": {"batch_sizes": batches}}.get(name, {})


def run_demo(experiment: str = "default", preset: str = "small", batch_size: int = 128,
             samples: int = 1024) -> Experiment:
    """The whole workflow on one experiment through its notebooks; prints what it measured."""

    for name in WORKFLOW:
        print(f"== {name}")
        print(f"   executed: {run_notebook(name, experiment, demo_parameters(name, preset, batch_size, samples))}")
    exp = Experiment.open(experiment)
    print(f"\nMeasured in {exp.root}:")
    print(measurements_table(exp).to_string(float_format=lambda v: f"{v:.4g}", na_rep="-"))
    bench = exp.measurement("bench")
    if bench:
        print("\nTVM's fastest build and the fastest peer (any precision keeping 99.9 % of the AUC) at each batch size:")
        print(headline_table(bench, exp).to_string(index=False))
        for note in unmeasured_notes(bench):
            print(f"  {note}")
    print(f"\nReport: {render_report(exp)}")
    return exp

REPORT_NOTEBOOK = "05_report"


def run_report(experiment: str, compare: list[str] | None = None, log=print) -> Path:
    """Execute notebook 05_report into the experiment, then render the HTML report."""
    exp = Experiment.open(experiment)
    executed = run_notebook(REPORT_NOTEBOOK, experiment, {"compare": list(compare or [])})
    log(f"[report] executed {executed}")
    path = render_report(exp)
    log(f"[report] {path}")
    return path
