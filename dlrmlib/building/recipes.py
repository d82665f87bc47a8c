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

from dlrmlib.building.calibrate import CALIBRATIONS, activation_ranges
from dlrmlib.building.from_log import add_untuned, check_log_mode, tuned_pipeline
from dlrmlib.core.errors import DlrmError
from dlrmlib.core.experiment import Experiment
from dlrmlib.core.machine import cpu_flags, precision_isa
from dlrmlib.core.paths import PACKAGE_DIR
from dlrmlib.core.target import machine_kind
from dlrmlib.formats.shipped_log import check_shipped, machine_mismatch
from dlrmlib.formats.tuning_log import (
    DEFAULT_PREPACK,
    WRITTEN_FILE,
    count_records,
    log_mode,
    resolve_prepack,
    snapshot_log,
    tuning_log_dir,
    written_choice,
)
from dlrmlib.formats.weights import ParamSpec, extract_weights, layout_id
from dlrmlib.frontend.relax import NUM_INPUTS
from dlrmlib.schedules import PIPELINE_NAME, custom_module
from dlrmlib.schedules.amx import MATTR
from dlrmlib.schedules.avx2_int8 import DEFAULT_OPERANDS, OPERANDS, avx2_quantization_facts
from dlrmlib.schedules.int8_tiles import int8_tiles_used
from dlrmlib.schedules.reduced import PRECISIONS, quantization_facts
from dlrmlib.schedules.knobs import check_knobs, default_kernel_log, kernel_configs, tuning_log_knobs
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
    precision: dict = field(default_factory=lambda: fp32_precision())  # the manifest's `precision`


def fp32_precision() -> dict:
    return {"name": "fp32", "isa": precision_isa("fp32"), "quantization": None, "accuracy": None}


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
    `<records>_prepack` with weight prepacking. `prepack=None` (the default): the mode the log
    records (`tasks.json`), or for the experiment's own log `resolve_prepack`'s choice."""

    log_dir: Path | None = None
    prepack: bool | None = None
    require_records: bool = True
    other_machine: bool = False  # build from a log tuned on another machine kind (refused otherwise)

    def layout(self, experiment: Experiment) -> bool:
        """Prepacked or plain: as asked, else as the named log was tuned, else the default."""
        if self.prepack is None and self.log_dir:
            recorded = log_mode(Path(self.log_dir))
            return DEFAULT_PREPACK if recorded is None else recorded
        return resolve_prepack(experiment, self.prepack)

    def folder(self, experiment: Experiment) -> Path:
        return Path(self.log_dir) if self.log_dir else tuning_log_dir(experiment, self.layout(experiment))

    @staticmethod
    def tag_for(records: int, prepack: bool, shipped: dict | None = None) -> str:
        """`<records>[_prepack]`; a shipped log's builds are named after the trials it was tuned
        with, `shipped_<trials>[_prepack]` (it keeps only a few records of each kernel)."""
        if shipped:
            return f"shipped_{shipped['trials']}" + ("_prepack" if prepack else "")
        return (f"{records}_prepack" if records else "untuned_prepack") if prepack else str(records)

    def _check_machine(self, folder: Path, target: dict, log) -> None:
        """A log tuned on another machine kind is refused (its schedules run here but were chosen
        there), unless `other_machine`, which says so."""
        why = machine_mismatch(folder, machine_kind(), target["mcpu"])
        if why and not self.other_machine:
            raise DlrmError(f"the tuning log {folder} {why}: its schedules were chosen for that CPU. Tune here "
                            "(`dlrm tune`, then `dlrm tune --ship`), or build from it anyway with --other-machine")
        if why:
            log(f"[build] note: the tuning log {why}; building from it anyway (--other-machine)")

    @contextmanager
    def lower(self, source: Source) -> Iterator[Lowering]:
        experiment, log = source.experiment, source.log
        prepack = self.layout(experiment)
        folder = self.folder(experiment)
        with tempfile.TemporaryDirectory(prefix="dlrm-tuning-log-") as tmp:
            records, database = 0, None
            shipped = None
            if self.require_records or count_records(folder):
                shipped = check_shipped(folder)  # a damaged shipped file is refused by name
                self._check_machine(folder, source.target, log)
                check_log_mode(folder, prepack)
                records = snapshot_log(folder, Path(tmp), log)
                if records == 0:
                    raise DlrmError(f"the tuning log {folder} has no records yet; run `dlrm tune --experiment "
                                    f"{experiment.name}{'' if prepack else ' --no-prepack'}` first")
                kept = (f"{records} records kept of {shipped['trials']} trials, tuned on {shipped.get('cpu')} "
                        f"({shipped.get('exported')})" if shipped else f"{records} trials")
                log(f"[build] tuning log {folder}: {kept}")
                add_untuned(folder, Path(tmp))
                database = Path(tmp)
            facts: dict = {}
            parts = ["MetaSchedule database" if database else "no tuning log"] + (
                ["weight prepacking"] if prepack else [])
            info = {"tuned": records > 0, "trials": shipped["trials"] if shipped else records, "schedule": "default",
                    "prepack": prepack,
                    "tuning_log": os.path.relpath(folder, experiment.builds_dir) if database else None,
                    "pipeline": f"dlrmlib.building.from_log.tuned_pipeline ({', '.join(parts)})"}
            written = written_choice(folder) if database else None  # the hand-written kernels it uses
            for name, config in (written[1] if written else {}).items():  # a hand-edited written.json
                check_knobs({"kernel": name, "config": config}, f"{folder / WRITTEN_FILE}: the entry")
            info["kernel_knobs"] = written[1] if written else {}  # theirs, as the run timed them
            lowering = Lowering(source.mod, tuned_pipeline(source.target, database, prepack, facts, written), info,
                                tag=self.tag_for(records, prepack, shipped))
            if prepack:
                lowering.weights = lambda library: self._weights(source, library, facts)
            if database is not None:
                lowering.after.append(lambda: log(
                    f"[build] {facts['tuned_kernels']} of {facts['kernels']} kernels took their schedule from "
                    "the tuning log (the best trial, or the untuned kernel where that was faster); "
                    f"{facts['written_kernels']} hand-written (gather + interaction, narrow last layer, and the "
                    f"Dense layers where the packed GEMM beat every trial: {', '.join(written[0]) or 'none'})"))
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


# (precision, forced instruction set) -> the flags ignored to reach it on a stronger host
LESSER = {("int8", "avx512_vnni"): ("amx",), ("bf16", "storage"): ("amx",), ("int8", "avx2"): ("amx", "avx512_vnni")}


@dataclass(frozen=True)
class Custom:
    """The hand-written kernels (packed GEMM + bias/ReLU, narrow last layer, fused gather +
    interaction), weights prepacked into the weights folder, with the knobs of `kernel_log`
    (a `dlrm tune --schedule custom` log folder; by default the experiment's own when it has
    one) or the defaults. `precision` int8 or bf16: the Dense layers with reduced-precision
    weights (dlrmlib.schedules.reduced), gated on accuracy by the build."""

    kernel_log: Path | None = None
    tag: str = "custom"
    precision: str = "fp32"
    isa: str | None = None  # None: the best this host has; "avx512_vnni" / "avx2" (int8), "storage" (bf16): lesser ones
    calibration: str = "dynamic"  # int8 activations: scales per row of every batch, or "static" (calibrated)
    operands: str = DEFAULT_OPERANDS  # int8 on AVX2: "s16" (exact 8-bit) or "u8s8" (7-bit activations, faster)

    @contextmanager
    def lower(self, source: Source) -> Iterator[Lowering]:
        experiment, log = source.experiment, source.log
        kernel_log = self.kernel_log if self.kernel_log is not None else default_kernel_log(experiment)
        knobs = kernel_configs(Path(kernel_log), log) if kernel_log is not None else {}
        if kernel_log is not None:
            log(f"[build] kernel knobs from {kernel_log} ({len(knobs)} kernels tuned)")
        from_tuning = self.tuning_log_knobs(experiment, knobs, log)
        knobs = {**knobs, **from_tuning}
        precision = self.precision_facts(source.target)
        amx = precision["isa"] in ("amx_int8", "amx_bf16")
        avx2 = self.operands if precision["isa"] == "avx2" else None
        if amx:  # LLVM's mcpu for the host may not list AMX (a VM's CPUID): the manifest says what was used
            source.target = {**source.target, "mattr": MATTR}
        seen: dict = {}
        fallbacks: dict = {}
        calibrated = self.calibrated(source)
        try:
            mod, plan = custom_module(source.mod, source.target, NUM_INPUTS, configs=knobs, seen=seen,
                                      fallbacks=fallbacks, precision=self.precision, amx=amx,
                                      ranges=calibrated["ranges"] if calibrated else None, avx2=avx2)
        except KeyError as e:  # a layer the calibration did not see
            raise DlrmError(f"static calibration: {e.args[0]}") from None
        for layer, why in fallbacks.items():
            log(f"[build] {layer}: default lowering, no hand-written kernel ({why})")
        if self.precision != "fp32":
            precision["quantization"] = (avx2_quantization_facts(seen, avx2) if avx2 else
                                         quantization_facts(self.precision, seen, precision["isa"]))
            if calibrated:
                precision["quantization"].update(static_facts(calibrated))
            if self.precision == "int8":
                tiles = precision["quantization"]["tiles"] = int8_tiles_used(seen, knobs, avx2)
                logged = sum(t["knobs"] == "kernel log" for t in tiles.values())
                log(f"[build] int8 GEMM tiles: {logged} of {len(tiles)} from the kernel log, the rest by the default "
                    "rules")
            log(f"[build] {self.precision} kernels ({precision['isa']}) for "
                f"{len(precision['quantization']['layers'])} Dense layers; the rest stays fp32")
        info = {"tuned": False, "trials": 0, "tuning_log": None, "pipeline": PIPELINE_NAME, "schedule": "custom",
                "prepack": not plan.identity, "kernel_log": str(kernel_log) if kernel_log is not None else None,
                "kernel_knobs": knobs, "kernel_fallbacks": fallbacks,
                "knobs_from_tuning_log": sorted(from_tuning)}
        lowering = Lowering(mod, None, info, precision=precision)
        if not plan.identity:
            transform_id = self.transform_id({**knobs, "precision": self.precision, "isa": precision["isa"],
                                              **({"operands": avx2} if avx2 else {})})
            lowering.weights = lambda library: (*prepacked_weights(source, library, plan, transform_id), TRANSFORM)
        yield lowering

    def tuning_log_knobs(self, experiment: Experiment, knobs: dict, log) -> dict:
        """The knobs the kernel log does not have, from the experiment's own (prepacked)
        MetaSchedule tuning log: the Dense layers' from its records of the hand-written space
        (these kernels timed by the tuner, dlrmlib.schedules.knobs.tuning_log_knobs), the others'
        from the knob records the tuning run measured (kernels.jsonl: the interaction's prefetch,
        int8 tiles). Not with an explicit --kernel-log, which says which knobs to use."""
        if self.kernel_log is not None:
            return {}
        folder = tuning_log_dir(experiment, prepack=True)
        found = {name: config for name, config in tuning_log_knobs(folder).items() if name not in knobs}
        if found:
            log(f"[build] knobs of {len(found)} Dense layers from the MetaSchedule records of the hand-written space "
                f"in {folder}")
        # the knobs the tuning run measured itself (the interaction's, int8 tiles): its kernels.jsonl
        measured = {name: config for name, config in kernel_configs(folder, log, required=False).items()
                    if name not in knobs and name not in found}
        if measured:
            log(f"[build] knobs of {len(measured)} more kernels ({', '.join(measured)}) from the knob records of {folder}")
        return {**found, **measured}

    def calibrated(self, source: Source) -> dict | None:
        """With `calibration="static"`: the Dense layers' input ranges over the calibration slice."""
        if self.calibration not in CALIBRATIONS:
            raise DlrmError(f"unknown calibration {self.calibration!r}: choose one of {', '.join(CALIBRATIONS)}")
        if self.calibration == "dynamic":
            return None
        if self.precision != "int8":
            raise DlrmError(f"--calibration static calibrates int8 activations; a {self.precision} build has none")
        return activation_ranges(source.experiment, source.log)

    def precision_facts(self, target: dict) -> dict:
        """The manifest's `precision` (its `accuracy` filled in by the build's gate); a clear
        error when this CPU or target cannot run the precision's kernels."""
        if self.precision not in PRECISIONS:
            raise DlrmError(f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.operands not in OPERANDS:
            raise DlrmError(f"unknown int8 operands {self.operands!r}: choose one of {', '.join(OPERANDS)}")
        isa = precision_isa(self.precision)
        if isa is not None and self.isa not in (None, isa):
            # a lesser instruction set on a stronger host (AMX -> AVX-512 -> AVX2), not the other way round
            dropped = LESSER.get((self.precision, self.isa))
            flags = [f for f in cpu_flags() if not f.startswith(dropped)] if dropped else None
            lesser = precision_isa(self.precision, flags) if dropped else None
            if lesser is None or (self.isa != "storage" and lesser != self.isa):
                raise DlrmError(f"{self.precision} kernels for {self.isa!r} cannot run here (this host: {isa})")
            isa = lesser
        if isa is None or (isa == "avx512_vnni" and not _target_has(target, "avx512vnni")) or (
                isa == "avx2" and not _target_has(target, "avx2")):
            raise DlrmError(f"a {self.precision} build needs AVX2 (or AVX512-VNNI, AMX) on this CPU and in the "
                            f"target ({target['mcpu']}); this host has none: build fp32 or bf16")
        return {**fp32_precision(), "name": self.precision, "isa": isa}

    @staticmethod
    def transform_id(knobs: dict) -> str:
        """The hash of dlrmlib.schedules' code and the kernels' knobs (panel widths change the
        packing): a change to either never reuses a folder packed the old way."""
        code = b"".join(p.read_bytes() for p in sorted((PACKAGE_DIR / "schedules").glob("*.py")))
        return hashlib.sha256(code + json.dumps(knobs, sort_keys=True).encode()).hexdigest()[:12]


def static_facts(calibrated: dict) -> dict:
    """The manifest's quantization fields of a statically calibrated int8 build."""
    return {"activations": "asymmetric, one scale and zero point per layer from the min/max of its input over the "
                           "calibration slice (static)",
            "calibration": "static", "calibration_samples": calibrated["samples"],
            "calibration_slice": calibrated["which"], "activation_ranges": calibrated["ranges"]}


def _target_has(target: dict, feature: str) -> bool:
    import tvm  # deferred: TVM takes ~1.5 s to import

    return bool(tvm.target.codegen.target_has_features(feature, tvm.target.Target(target)))


def best_recipe(experiment: Experiment, log_dir: Path | None = None, prepack: bool | None = None,
                other_machine: bool = False):
    """From the tuning log when it has records (an explicit `log_dir` must), else untuned
    (prepacked only when asked for explicitly: the study's untuned baseline is plain).
    `prepack=None`: prepacked unless the experiment's only log is an older plain one."""
    if log_dir is not None:
        return FromLog(log_dir, prepack, other_machine=other_machine)
    if count_records(tuning_log_dir(experiment, resolve_prepack(experiment, prepack))):
        return FromLog(None, prepack, other_machine=other_machine)
    return FromLog(None, True, require_records=False) if prepack else Untuned()
