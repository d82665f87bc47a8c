"""An experiment: one folder that holds everything a run made (see docs/formats.md)."""
from __future__ import annotations

import fcntl
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from dlrmlib.core.errors import DlrmError
from dlrmlib.core.files import read_json, write_json
from dlrmlib.core.paths import REPO_ROOT

DEFAULT_EXPERIMENT = "default"
EXPERIMENTS_ENV = "DLRM_EXPERIMENTS_DIR"
MAX_NAME = 128
_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NAME - 1}}}")
PREPARING = ".preparing"  # in an experiment whose `dlrm prepare` has not finished


def experiments_root() -> Path:
    """`$DLRM_EXPERIMENTS_DIR`, else `experiments/` in the repository (or the current folder)."""
    value = os.environ.get(EXPERIMENTS_ENV)
    if value is not None:
        if not value.strip():  # not silently the repository's folder
            raise DlrmError(f"{EXPERIMENTS_ENV} is set but empty: name a folder, or unset it to use experiments/ "
                            "in the repository")
        root = Path(value).expanduser().resolve()
        if root.exists() and not root.is_dir():
            raise DlrmError(f"{EXPERIMENTS_ENV} names {root}, which is a file, not a folder")
        return root
    repo = REPO_ROOT
    base = repo if (repo / "pyproject.toml").exists() else Path.cwd()
    return base / "experiments"


def check_name(name: str) -> str:
    """A plain folder name: no slashes, no `..`, so an experiment cannot escape its root."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in {".", ".."}:
        raise DlrmError(f"experiment name {name!r} is not allowed: use letters, digits, '.', '_' and '-' "
                        f"(starting with a letter or digit), no slashes, at most {MAX_NAME} characters")
    return name


@dataclass
class Experiment:
    name: str
    root: Path

    @classmethod
    def of(cls, experiment: "Experiment | str") -> "Experiment":
        """An Experiment as given, or the one a name opens (what every step accepts)."""
        return experiment if isinstance(experiment, Experiment) else cls.open(experiment)

    @classmethod
    def open(cls, name: str = DEFAULT_EXPERIMENT, root: str | Path | None = None, create: bool = False) -> "Experiment":
        root = Path(root).resolve() if root else experiments_root()
        exp = cls(check_name(name), root / name)
        if not create and not exp.params_path.is_file():
            raise DlrmError(f"experiment {name!r} has not been prepared (no {exp.params_path}); "
                            f"run `dlrm prepare --experiment {name}` or notebook 01_setup first")
        if not create and exp.preparing_marker.exists():
            raise DlrmError(f"experiment {name!r} is not prepared: its last `dlrm prepare` did not finish (a "
                            f"failure or a kill); run `dlrm prepare --experiment {name}` again")
        if create:
            exp.root.mkdir(parents=True, exist_ok=True)
        return exp

    # -- where things live --------------------------------------------------------------
    @property
    def params_path(self) -> Path:
        return self.root / "params.json"

    @property
    def preparing_marker(self) -> Path:
        return self.root / PREPARING

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def source_model(self) -> Path:
        return self.model_dir / "model.onnx"

    @property
    def normalised_model(self) -> Path:
        return self.model_dir / "normalised.onnx"

    @property
    def testdata_dir(self) -> Path:
        return self.root / "testdata"

    @property
    def weights_root(self) -> Path:
        return self.root / "weights"

    @property
    def tune_dir(self) -> Path:
        return self.root / "tune"

    @property
    def builds_dir(self) -> Path:
        return self.root / "builds"

    @property
    def measurements_dir(self) -> Path:
        return self.root / "measurements"

    @property
    def notebooks_dir(self) -> Path:
        return self.root / "notebooks"

    @property
    def figures_dir(self) -> Path:
        return self.root / "figures"

    # -- parameters and records ---------------------------------------------------------
    @property
    def params(self) -> dict:
        return read_json(self.params_path)

    @property
    def batch_size(self) -> int:
        """The batch size the experiment's model is normalised, tuned and built for."""
        return int(self.params["batch_size"])

    @property
    def ids_per_bag(self) -> int:
        """Ids in every bag of the test data (and what the normalised model takes per sample);
        experiments prepared before multi-hot test data hold one."""
        return int(self.params.get("ids_per_bag", 1))

    @contextmanager
    def lock(self, name: str, doing: str):
        """Hold one of the experiment's locks (`<name>.lock`, fcntl.flock) while `doing` (e.g.
        "tuned"): the OS releases it when the process dies, so a killed run never leaves a
        stale lock; a second holder is refused with a message naming the first."""
        path = self.root / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                raise DlrmError(f"experiment {self.name!r} is already being {doing} ({holder}); wait for that "
                                f"run to finish or stop it, then run again") from None
            f.truncate(0)
            f.write(f"pid {os.getpid()}, started {datetime.now(timezone.utc).isoformat(timespec='seconds')}\n")
            f.flush()
            try:
                yield
            finally:
                f.truncate(0)
                fcntl.flock(f, fcntl.LOCK_UN)

    def save_params(self, params: dict) -> None:
        write_json(self.params_path, params)

    def manifest_path(self, tag: str) -> Path:
        return self.builds_dir / f"saved_model_{tag}.json"

    def library_path(self, tag: str) -> Path:
        return self.builds_dir / f"saved_model_{tag}.so"

    def builds(self) -> list[Path]:
        """Manifests of every build, oldest first."""
        return sorted(self.builds_dir.glob("saved_model_*.json"), key=lambda p: p.stat().st_mtime)

    def latest_build(self) -> Path:
        builds = self.builds()
        if not builds:
            raise DlrmError(f"experiment {self.name!r} has no build yet; run `dlrm build --experiment {self.name}`")
        return builds[-1]

    def save_measurement(self, name: str, result: dict) -> Path:
        return write_json(self.measurements_dir / f"{name}.json", result)

    def measurement(self, name: str, missing: str | None = None) -> dict | None:
        """One measurement; None when absent, or a DlrmError saying `missing` (what to run)."""
        path = self.measurements_dir / f"{name}.json"
        if path.is_file():
            return read_json(path)
        if missing:
            raise DlrmError(f"experiment {self.name!r} has no {name} measurement yet; {missing}")
        return None

    def measurements(self) -> dict[str, dict]:
        return {p.stem: read_json(p) for p in sorted(self.measurements_dir.glob("*.json"))}
