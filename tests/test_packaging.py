"""The set-up: environment.yml repeats pyproject.toml's pins, and the entry point exists."""
import re
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]


def pins(lines):
    return {m.group(1).lower(): m.group(2) for line in lines if (m := re.match(r"\s*-?\s*\"?([A-Za-z0-9_.-]+)==([^\"\s,]+)", line))}


def test_environment_yml_repeats_pyproject_pins():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = pins([f'"{d}"' for d in project["dependencies"] + project["optional-dependencies"]["test"]])
    conda = pins((REPO / "environment.yml").read_text().splitlines())
    assert wanted and conda == wanted


def test_dlrm_command_is_declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["dlrm"] == "dlrmlib.cli.main:main"
