"""Distributed tuning: MetaSchedule measures on TVM RPC servers registered with a tracker
(here a real tracker and two real servers on loopback)."""
import json

import pytest

from dlrmlib.core.errors import DlrmError
from dlrmlib.tuning.rpc import RpcMeasurement, TrackerAddress, local_cluster, registered_servers


def test_tracker_address_parsing():
    assert TrackerAddress.parse("10.0.0.5:9190") == TrackerAddress("10.0.0.5", 9190)
    for bad in ("9190", "host:", "host:port", "host:70000"):
        with pytest.raises(DlrmError, match="HOST:PORT"):
            TrackerAddress.parse(bad)


def test_unreachable_tracker_is_a_clear_error():
    with pytest.raises(DlrmError, match="cannot reach the RPC tracker at 127.0.0.1:9"):
        RpcMeasurement.connect("127.0.0.1:9", timeout=2)


def test_tuning_through_a_loopback_tracker_and_two_servers(experiments_root):
    from dlrmlib.formats.tuning_log import count_records
    from dlrmlib.prepare import prepare
    from dlrmlib.tuning.metaschedule import tune

    exp = prepare("tiny-rpc", preset="tiny", batch_size=16, samples=32, root=experiments_root, log=lambda _: None)
    with local_cluster(servers=2, key="dlrm-test") as tracker:
        assert registered_servers(tracker, "dlrm-test") == 2
        rpc = RpcMeasurement.connect(str(tracker), key="dlrm-test")
        assert rpc.servers == 2
        # one batch of 8 candidates, spread over both servers (16 trials were two such batches)
        result = tune(exp, trials=8, rpc=rpc, progress=False, log=lambda _: None)
    assert result.trials >= 8 and result.new_trials >= 8 and count_records(result.log_dir) == result.trials
    trials = [json.loads(line) for line in (result.log_dir / "trials.jsonl").read_text().splitlines()]
    assert any(t.get("latency_s") for t in trials), "no trial was measured on the RPC servers"


def test_tune_command_with_a_dead_tracker_says_so(experiments_root):
    import os
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "dlrmlib.cli.main", "tune", "--experiment", "tiny-rpc", "--trials", "4",
                           "--rpc-tracker", "127.0.0.1:9"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DLRM_EXPERIMENTS_DIR": str(experiments_root)})
    assert done.returncode == 2 and "cannot reach the RPC tracker at 127.0.0.1:9" in done.stderr, done.stderr
