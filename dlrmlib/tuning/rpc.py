"""Distributed tuning over TVM RPC: measure candidates on other machines through TVM's own
tracker and servers (`python -m tvm.exec.rpc_tracker`, `python -m tvm.exec.rpc_server`).

The tuning machine builds candidates and asks the tracker for a server registered under a
device key; the server runs the candidate and reports its time. `local_cluster` starts a
tracker and servers on loopback, for tests and for trying the setup on one machine.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

from dlrmlib.core.errors import DlrmError

DEFAULT_KEY = "dlrm-cpu"


@dataclass(frozen=True)
class TrackerAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "TrackerAddress":
        """`HOST:PORT`, as `--rpc-tracker` takes it."""
        host, sep, port = str(text).rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise DlrmError(f"RPC tracker address {text!r} is not HOST:PORT (for example 127.0.0.1:9190)")
        return cls(host, int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def registered_servers(tracker: TrackerAddress, key: str) -> int:
    """How many servers the tracker has registered under `key`."""
    from tvm import rpc

    try:
        summary = rpc.connect_tracker(tracker.host, tracker.port).summary()
    except Exception as e:
        raise DlrmError(f"cannot reach the RPC tracker at {tracker}: {e}") from None
    return sum(1 for info in summary.get("server_info", []) if info.get("key") == f"server:{key}")


def wait_for_servers(tracker: TrackerAddress, key: str, count: int, timeout: float = 60.0) -> int:
    """Block until `count` servers under `key` are registered; a clear error if they never come."""
    _wait_for_port(tracker, timeout)  # tvm's own connect retries for a minute on a dead address
    deadline = time.monotonic() + timeout
    found = 0
    while time.monotonic() < deadline:
        try:
            found = registered_servers(tracker, key)
        except DlrmError:
            found = 0
        if found >= count:
            return found
        time.sleep(0.5)
    raise DlrmError(f"only {found} of {count} RPC servers with key {key!r} registered at {tracker} "
                    f"within {timeout:.0f} s; start them with `python -m tvm.exec.rpc_server "
                    f"--tracker {tracker} --key {key}`")


@dataclass(frozen=True)
class RpcMeasurement:
    """Where tuning measures: the tracker, the servers' device key, how many servers to use."""

    tracker: TrackerAddress
    key: str = DEFAULT_KEY
    servers: int = 1

    @classmethod
    def connect(cls, tracker: str | TrackerAddress, key: str = DEFAULT_KEY, servers: int | None = None,
                timeout: float = 10.0) -> "RpcMeasurement":
        """Check the tracker answers and has servers under `key`; `servers` defaults to all of them."""
        address = tracker if isinstance(tracker, TrackerAddress) else TrackerAddress.parse(tracker)
        if servers is not None and servers < 1:
            raise DlrmError(f"the number of RPC servers must be at least 1, got {servers}")
        found = wait_for_servers(address, key, servers or 1, timeout)
        return cls(address, key, servers or found)

    @classmethod
    def optional(cls, tracker: str | None, key: str = DEFAULT_KEY, servers: int | None = None) -> "RpcMeasurement | None":
        """`connect` when a tracker is given; None (measure on this machine) for an empty one."""
        return cls.connect(tracker, key, servers) if tracker else None

    def runner(self, evaluator_config, timeout_sec: float, f_alloc_argument):
        """TVM's RPCRunner: one candidate per server at a time."""
        from tvm.s_tir.meta_schedule.runner import RPCConfig, RPCRunner

        config = RPCConfig(tracker_host=self.tracker.host, tracker_port=self.tracker.port, tracker_key=self.key,
                           session_priority=1, session_timeout_sec=int(timeout_sec))
        return RPCRunner(rpc_config=config, evaluator_config=evaluator_config, max_workers=self.servers,
                         f_alloc_argument=f_alloc_argument)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(address: TrackerAddress, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((address.host, address.port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise DlrmError(f"cannot reach the RPC tracker at {address} (nothing listening there within {timeout:.0f} s); "
                    f"start one with `python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port {address.port}`")


def _start(args: list[str]) -> subprocess.Popen:
    # Own process group: an RPC server forks a worker per session, and all must stop with it.
    return subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def local_cluster(servers: int = 2, key: str = DEFAULT_KEY, timeout: float = 60.0):
    """A tracker and `servers` RPC servers on loopback; yields the tracker's address. Everything
    is stopped when the block ends, even on error."""
    port = _free_port()
    tracker = TrackerAddress("127.0.0.1", port)
    procs = [_start(["tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                     "--port-end", str(port + 1), "--silent"])]
    try:
        _wait_for_port(tracker, timeout)
        for _ in range(servers):
            server_port = _free_port()
            procs.append(_start(["tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(server_port),
                                 "--port-end", str(server_port + 1), "--tracker", str(tracker), "--key", key,
                                 "--silent"]))
        wait_for_servers(tracker, key, servers, timeout)
        yield tracker
    finally:
        for proc in reversed(procs):
            _stop(proc)
