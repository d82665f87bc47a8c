"""Build recipes: how a build lowers the imported model, one class per kind of build.

- `Untuned`: TVM's default Relax pipeline for the CPU (no schedules: the study's baseline),
- `FromLog`: MetaSchedule's best schedules from a tuning log, plain or weight-prepacked,
- `Custom`: the hand-written kernels of dlrmlib.schedules, with the knobs of a kernel log.
A recipe gets the build's `Source` (the graph read and hashed once, the Relax module, the
target) and yields a `Lowering`: the module to compile, its pipeline, what the manifest says
about it, and, when the library takes transformed weights, how to write them.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from dlrmlib.building.from_log import add_untuned, check_log_mode, tuned_pipeline
from dlrmlib.core.errors import DlrmError
from dlrmlib.core.experiment import Experiment
from dlrmlib.core.paths import PACKAGE_DIR
from dlrmlib.formats.tuning_log import count_records, snapshot_log, tuning_log_dir
from dlrmlib.formats.weights import ParamSpec, extract_weights, layout_id
from dlrmlib.frontend.relax import NUM_INPUTS
from dlrmlib.schedules import PIPELINE_NAME, custom_module
from dlrmlib.schedules.knobs import default_kernel_log, kernel_configs
from dlrmlib.schedules.prepack import TRANSFORM, transformed_param_specs, write_transformed_weights

Weights = tuple[Path, list[ParamSpec], str]  # (folder, params in `main`'s order, layout id)


@dataclass
class Source:
    """What every recipe starts from, made once per build."""

    experiment: Experiment
    model: object  # the normalised onnx.ModelProto, graph only
    model_id: str  # formats.weights.model_identity of the normalised model
    mod: object  # the imported Relax module
    target: dict
    log: Callable[[str], None]
    batch_size: int = 0  # the model's; 0: the experiment's
    _plain: Weights | None = None

    def __post_init__(self):
        self.batch_size = self.batch_size or self.experiment.batch_size

    def plain_weights(self) -> Weights:
        """The plain weights folder (no transform), written at most once per build."""
        if self._plain is None:
            self._plain = extract_weights(self.experiment, self.model, self.model_id)
        return self._plain


@dataclass
class Lowering:
    mod: object
    pipeline: object | None  # None: TVM's default Relax pipeline for the target
    info: dict  # the manifest's `build` fields
    weights: Callable[[Path], tuple[Path, list[ParamSpec], str, str | None]] | None = None
    after: list[Callable[[], None]] = field(default_factory=list)  # log lines once compiled
    tag: str | None = None  # when only the lowering knows it (a log's record count)


def prepacked_weights(source: Source, library: Path, plan, transform_id: str) -> Weights:
    """The weights folder of a library whose `main` takes transformed (prepacked) weights, the
    transform run once here, never by a runner. `transform_id` names what the transform does,
    so that changed packing never reuses a folder packed another way."""
    plain_dir, plain_params, _ = source.plain_weights()
    specs = transformed_param_specs(plain_params, plan)
    layout = layout_id(source.model_id, specs, f"{TRANSFORM}:{transform_id}")
    folder = source.experiment.weights_root / layout
    write_transformed_weights(folder, layout, library, plan, plain_dir, plain_params)
    return folder, specs, layout


@dataclass(frozen=True)
class Untuned:
    """TVM's default Relax pipeline: fused operators, no schedules."""

    tag: str = "untuned"

    @contextmanager
    def lower(self, source: Source) -> Iterator[Lowering]:
        yield Lowering(source.mod, None, {"tuned": False, "trials": 0, "tuning_log": None, "prepack": False,
                                          "schedule": "default", "pipeline": "relax default (cpu_generic)"})


@dataclass(frozen=True)
class FromLog:
    """MetaSchedule's best schedules from a tuning log (the experiment's own by default); an
    empty log with `prepack` is the untuned prepacked baseline. Tag: the log's record count,
    `<records>_prepack` with weight prepacking."""

    log_dir: Path | None = None
    prepack: bool = False
    require_records: bool = True

    def folder(self, experiment: Experiment) -> Path:
        return Path(self.log_dir) if self.log_dir else tuning_log_dir(experiment, self.prepack)

    def tag_for(self, records: int) -> str:
        return (f"{records}_prepack" if records else "untuned_prepack") if self.prepack else str(records)

    @contextmanager
    def lower(self, source: Source) -> Iterator[Lowering]:
        experiment, log = source.experiment, source.log
        folder = self.folder(experiment)
        with tempfile.TemporaryDirectory(prefix="dlrm-tuning-log-") as tmp:
            records, database = 0, None
            if self.require_records or count_records(folder):
                check_log_mode(folder, self.prepack)
                records = snapshot_log(folder, Path(tmp), log)
                if records == 0:
                    raise DlrmError(f"the tuning log {folder} has no records yet; run `dlrm tune --experiment "
                                    f"{experiment.name}{' --prepack' if self.prepack else ''}` first")
                log(f"[build] tuning log {folder}: {records} trials")
                add_untuned(folder, Path(tmp))
                database = Path(tmp)
            facts: dict = {}
            parts = ["MetaSchedule database" if database else "no tuning log"] + (
                ["weight prepacking"] if self.prepack else [])
            info = {"tuned": records > 0, "trials": records, "schedule": "default", "prepack": self.prepack,
                    "tuning_log": os.path.relpath(folder, experiment.builds_dir) if database else None,
                    "pipeline": f"dlrmlib.building.from_log.tuned_pipeline ({', '.join(parts)})"}
            lowering = Lowering(source.mod, tuned_pipeline(source.target, database, self.prepack, facts), info,
                                tag=self.tag_for(records))
            if self.prepack:
                lowering.weights = lambda library: self._weights(source, library, facts)
            if database is not None:
                lowering.after.append(lambda: log(
                    f"[build] {facts['tuned_kernels']} of {facts['kernels']} kernels took their schedule from "
                    "the tuning log (the best trial, or the untuned kernel where that was faster)"))
            yield lowering

    @staticmethod
    def _weights(source: Source, library: Path, facts: dict):
        """What `main` takes after the tuned kernels' weight transforms were lifted into
        `main_transform_params`, run once here on the plain weights (tables are hard-linked,
        not copied); the manifest says it is done."""
        plan = facts["plan"]
        if plan.identity:
            return (*source.plain_weights(), None)
        source.log(f"[build] prepacking {len(plan.sources)} weights once ({TRANSFORM})")
        return (*prepacked_weights(source, library, plan, facts["transform_id"]), TRANSFORM)


@dataclass(frozen=True)
class Custom:
    """The hand-written kernels (packed GEMM + bias/ReLU, narrow last layer, fused gather +
    interaction), weights prepacked into the weights folder, with the knobs of `kernel_log`
    (a `dlrm tune --schedule custom` log folder; by default the experiment's own when it has
    one) or the defaults."""

    kernel_log: Path | None = None
    tag: str = "custom"

    @contextmanager
    def lower(self, source: Source) -> Iterator[Lowering]:
        experiment, log = source.experiment, source.log
        kernel_log = self.kernel_log if self.kernel_log is not None else default_kernel_log(experiment)
        knobs = kernel_configs(Path(kernel_log), log) if kernel_log is not None else {}
        if kernel_log is not None:
            log(f"[build] kernel knobs from {kernel_log} ({len(knobs)} kernels tuned)")
        mod, plan = custom_module(source.mod, source.target, NUM_INPUTS, configs=knobs)
        info = {"tuned": False, "trials": 0, "tuning_log": None, "pipeline": PIPELINE_NAME, "schedule": "custom",
                "prepack": not plan.identity, "kernel_log": str(kernel_log) if kernel_log is not None else None,
                "kernel_knobs": knobs}
        lowering = Lowering(mod, None, info)
        if not plan.identity:
            transform_id = self.transform_id(knobs)
            lowering.weights = lambda library: (*prepacked_weights(source, library, plan, transform_id), TRANSFORM)
        yield lowering

    @staticmethod
    def transform_id(knobs: dict) -> str:
        """The hash of dlrmlib.schedules' code and the kernels' knobs (panel widths change the
        packing): a change to either never reuses a folder packed the old way."""
        code = b"".join(p.read_bytes() for p in sorted((PACKAGE_DIR / "schedules").glob("*.py")))
        return hashlib.sha256(code + json.dumps(knobs, sort_keys=True).encode()).hexdigest()[:12]


def best_recipe(experiment: Experiment, log_dir: Path | None = None, prepack: bool = False):
    """From the tuning log when it has records (an explicit `log_dir` must), else untuned."""
    if log_dir is not None or count_records(tuning_log_dir(experiment, prepack)):
        return FromLog(log_dir, prepack)
    return FromLog(None, True, require_records=False) if prepack else Untuned()
