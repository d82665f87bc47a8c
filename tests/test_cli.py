"""The `dlrm` command: the steps from a shell, and clear messages (no tracebacks) for bad input."""
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import onnx
import pytest

from dlrmlib.formats.model import generate_model
from dlrmlib.formats.presets import preset_config


def dlrm(*args, root):
    env = {**os.environ, "DLRM_EXPERIMENTS_DIR": str(root)}
    return subprocess.run([sys.executable, "-m", "dlrmlib.cli.main", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=900)


@pytest.fixture
def dlrm_here(monkeypatch, capsys):
    """`dlrm ARGS` run by its entry point `main` in this process (a new process costs seconds of
    imports; the shell path itself is test_prepare_and_build_from_the_shell's): exit status and
    stderr as dlrm() gives them. DLRM_IN_CHILD: a build runs here, not in a child process."""
    from dlrmlib.cli.main import main

    def run(*args, root):
        monkeypatch.setenv("DLRM_EXPERIMENTS_DIR", str(root))
        monkeypatch.setenv("DLRM_IN_CHILD", "1")
        code = main(list(map(str, args)))
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out, stderr=err)

    return run


def assert_clear_error(done, *words):
    assert done.returncode == 2, done.stderr
    # TVM's own log lines may come first; our message is the last word.
    assert done.stderr.strip().splitlines()[-1].startswith("dlrm: error: "), done.stderr
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in done.stderr, (word, done.stderr)


def test_prepare_and_build_from_the_shell(tmp_path):
    done = dlrm("prepare", "--experiment", "cli", "--preset", "tiny", "--batch-size", 8, "--samples", 24,
                "--style", "aten", root=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "cli" / "testdata" / "reference.npy").is_file()
    done = dlrm("build", "--experiment", "cli", root=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "max |TVM - ONNX Runtime|" in done.stdout
    assert (tmp_path / "cli" / "builds" / "saved_model_untuned.json").is_file()


def test_bad_parameters(tmp_path, dlrm_here):
    assert_clear_error(dlrm_here("prepare", "--preset", "huge", root=tmp_path), "unknown preset 'huge'")
    assert_clear_error(dlrm_here("prepare", "--preset", "tiny", "--batch-size", 0, root=tmp_path), "--batch-size")
    assert_clear_error(dlrm_here("prepare", "--experiment", "../escape", "--preset", "tiny", root=tmp_path),
                       "not allowed")
    assert not (tmp_path.parent / "escape").exists()
    assert_clear_error(dlrm_here("build", "--experiment", "never-prepared", root=tmp_path), "has not been prepared")


def test_missing_and_corrupt_models(tmp_path, dlrm_here):
    assert_clear_error(dlrm_here("prepare", "--onnx-model", tmp_path / "nope.onnx", root=tmp_path), "not found")
    (tmp_path / "garbage.onnx").write_bytes(os.urandom(4096))
    assert_clear_error(dlrm_here("prepare", "--onnx-model", tmp_path / "garbage.onnx", root=tmp_path), "garbage.onnx")


def test_external_data_missing_or_short(tmp_path, dlrm_here):
    from dataclasses import replace

    from dlrmlib.formats.presets import PRESETS

    source = tmp_path / "src"
    generate_model(replace(PRESETS["tiny"], table_rows=(20000,) * 26), source / "m.onnx")
    data = source / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:1000])
    assert_clear_error(dlrm_here("prepare", "--onnx-model", source / "m.onnx", root=tmp_path), "truncated",
                       "m.onnx.data")
    data.unlink()
    assert_clear_error(dlrm_here("prepare", "--onnx-model", source / "m.onnx", root=tmp_path), "missing", "m.onnx.data")


def test_unsupported_op_is_named(tmp_path):
    path = generate_model(preset_config("tiny"), tmp_path / "m.onnx")
    model = onnx.load(str(path))
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map
    relu.op_type = next(op for op in ("Col2Im", "StringNormalizer", "TfIdfVectorizer", "Celu")
                        if op not in _get_convert_map())
    onnx.save(model, str(path))
    done = dlrm("prepare", "--experiment", "unsupported", "--onnx-model", path, "--batch-size", 4, "--samples", 8,
                root=tmp_path)
    if done.returncode == 0:  # ONNX Runtime ran it: then TVM's import must refuse it by name
        done = dlrm("build", "--experiment", "unsupported", root=tmp_path)
    assert_clear_error(done, relu.op_type)


def test_test_data_with_wrong_shapes(tmp_path, dlrm_here):
    assert dlrm_here("prepare", "--experiment", "td", "--preset", "tiny", "--batch-size", 8, "--samples", 16,
                     root=tmp_path).returncode == 0
    dense = tmp_path / "td" / "testdata" / "dense.npy"
    np.save(dense, np.load(dense)[:, :10])
    assert_clear_error(dlrm_here("build", "--experiment", "td", root=tmp_path), "dense features have shape [16, 10]")
