"""Tables larger than memory: preparing, loading and running a model never holds a second copy
of its weights. Measured on a tiny-architecture model with big tables (about 330 MB of
weights): the process's anonymous memory must stay well below the weights' size, because
the weights live in page-cache pages of mapped files, which the kernel can drop and re-read."""

import numpy as np
import pytest

from dlrmlib.backends import predict_all
from dlrmlib.backends.tvm import TvmBackend, weight_tensor
from dlrmlib.building.native import native_binary, run_native
from dlrmlib.core.machine import PeakAnon
from dlrmlib.formats.testdata import read_test_data
from dlrmlib.formats.weights import manifest_params, map_weights, read_manifest

ROWS = 200_000  # 26 tables x 200,000 rows x 16 floats: 333 MB



@pytest.fixture(scope="module")
def big(experiments_root):
    from dlrmlib.building.build import build
    from dlrmlib.prepare import prepare

    with PeakAnon() as prepared:
        exp = prepare("beyond-ram", preset="tiny", table_rows=ROWS, batch_size=16, samples=64,
                      root=experiments_root, log=lambda _: None)
    result = build(exp, verify=False, log=lambda _: None)
    weights = sum(p["bytes"] for p in read_manifest(result.manifest)["params"])
    return {"exp": exp, "build": result, "weights_bytes": weights, "prepare_anon_growth": prepared.growth}


def test_weights_are_big_enough_to_tell(big):
    assert big["weights_bytes"] > 300e6


def test_prepare_streams_the_tables(big):
    # Generation is chunked, normalising reads the graph only, ONNX Runtime maps the external
    # data, and the weights folder is copied in blocks: no step holds a whole table.
    assert big["prepare_anon_growth"] < big["weights_bytes"] / 3, big["prepare_anon_growth"]


def test_python_backend_maps_weights_without_copying(big):
    data = read_test_data(big["exp"].testdata_dir)
    with PeakAnon() as run:
        backend = TvmBackend(big["build"].manifest)
        outputs = predict_all(backend, data.dense, data.sparse)
    np.testing.assert_allclose(outputs, data.reference, atol=1e-5, rtol=0)
    assert run.growth < big["weights_bytes"] / 10, run.growth


def test_weight_tensor_shares_the_mapping(big):
    import tvm

    manifest = read_manifest(big["build"].manifest)
    mapped = map_weights(big["build"].weights_dir, manifest_params(manifest))
    table = max(mapped, key=lambda a: a.nbytes)
    tensor = weight_tensor(table, tvm.cpu())
    assert np.from_dlpack(tensor).ctypes.data == table.ctypes.data  # the file's pages, no copy
    unaligned = np.arange(17, dtype=np.float32)[1:]  # 4 bytes past an aligned start
    copied = weight_tensor(unaligned, tvm.cpu())
    assert np.array_equal(copied.numpy(), unaligned)


def test_native_runner_maps_weights(big, tmp_path):
    result = run_native(big["build"].manifest, big["exp"].testdata_dir, tmp_path / "r.json", iterations=1,
                        warmup=1, binary=native_binary())
    assert result["max_abs_err"] <= 1e-5
    assert result["rss_anon_kb"] * 1024 < big["weights_bytes"] / 4, result["rss_anon_kb"]



def _sparse_files_work(folder) -> bool:
    probe = folder / "sparse-probe"
    with open(probe, "wb") as f:
        f.truncate(2**30)
    holes = probe.stat().st_blocks * 512 < 2**20
    probe.unlink()
    return holes


@pytest.mark.slow
def test_terabyte_preset_normalises_in_little_memory(tmp_path):
    """`dlrm prepare --preset terabyte`'s normalising step on the preset's real graph and data
    layout (96 GB of tables, the data file a hole: benchmarks/bench_normalise_terabyte.py):
    peak anonymous memory under 2 GiB, and the tables are never read."""
    import importlib.util
    from pathlib import Path

    if not _sparse_files_work(tmp_path):
        pytest.skip("this filesystem cannot hold a sparse file; the 96 GB data file would be real")
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_normalise_terabyte.py"
    spec = importlib.util.spec_from_file_location("bench_normalise_terabyte", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.measure("terabyte", batch_size=128, folder=tmp_path / "terabyte")
    assert result["data_file_bytes"] > 90e9 and result["loops_left"] == 0
    assert result["peak_anon_bytes"] < bench.LIMIT, result
    assert result["bytes_read"] < 64 * 2**20, result  # the graph and probes, never a table
