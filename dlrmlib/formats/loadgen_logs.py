"""Reading what LoadGen wrote: `mlperf_log_summary.txt`, `mlperf_log_detail.txt` and
`mlperf_log_accuracy.json`. The files are LoadGen's record of a run; the numbers dlrmlib
keeps come from them, not from the harness's own clocks."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from dlrmlib.core.errors import DlrmError

SUMMARY = "mlperf_log_summary.txt"
DETAIL = "mlperf_log_detail.txt"
ACCURACY = "mlperf_log_accuracy.json"
_SUMMARY_LINE = re.compile(r"^\s*([^:=]+?)\s*:\s*(.+?)\s*$")
_MLLOG = ":::MLLOG "


def _number(text: str):
    """An int or float when the text is one, else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _required(folder: Path, name: str) -> Path:
    path = Path(folder) / name
    if not path.is_file():
        raise DlrmError(f"LoadGen wrote no {name} in {folder}: the run did not finish")
    return path


def parse_summary(folder: Path) -> dict:
    """`key : value` lines of the summary (first occurrence wins), numbers as numbers."""
    result: dict = {}
    for line in _required(folder, SUMMARY).read_text().splitlines():
        match = _SUMMARY_LINE.match(line)
        if match and not line.lstrip().startswith("*"):
            result.setdefault(match.group(1), _number(match.group(2)))
    return result


def parse_detail(folder: Path) -> dict:
    """The detail log's `:::MLLOG {json}` entries as key -> value (the last one wins)."""
    result: dict = {}
    for line in _required(folder, DETAIL).read_text().splitlines():
        if line.startswith(_MLLOG):
            try:
                entry = json.loads(line[len(_MLLOG):])
            except json.JSONDecodeError:
                continue  # LoadGen cuts very long values; they are not ones we read
            result[entry["key"]] = entry["value"]
    return result


def read_accuracy_log(folder: Path) -> dict[int, np.ndarray]:
    """Query sample index -> the float32 scores the SUT returned for it (each sample once)."""
    try:
        entries = json.loads(_required(folder, ACCURACY).read_text())
    except json.JSONDecodeError as e:
        raise DlrmError(f"{Path(folder) / ACCURACY} is not valid JSON (truncated?): {e}") from None
    scores: dict[int, np.ndarray] = {}
    for entry in entries:
        scores.setdefault(int(entry["qsl_idx"]), np.frombuffer(bytes.fromhex(entry["data"]), dtype="<f4"))
    return scores
