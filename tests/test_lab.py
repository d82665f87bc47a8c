"""JupyterLab out of the box: `make setup` installs it with the project's kernel. A real server,
started headless on a free port with a token, lists the notebooks through its REST API and
runs one notebook through the registered kernel over the server's kernel websocket, as the
browser would."""
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import nbformat
import pytest

from dlrmlib.cli.notebooks import NOTEBOOKS_DIR, WORKFLOW

KERNEL = "dlrm-tvm"  # registered by `make setup`
SETUP_PARAMETERS = 'experiment = "lab-tiny"\npreset = "tiny"\nbatch_size = 8\nsamples = 40\n'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    def __init__(self, port: int, token: str, log: Path):
        self.base, self.token, self.log = f"127.0.0.1:{port}", token, log

    def request(self, path: str, body: dict | None = None, method: str | None = None):
        req = urllib.request.Request(f"http://{self.base}{path}", method=method or ("POST" if body else "GET"),
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"token {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as response:
            text = response.read().decode()
            return json.loads(text) if response.headers.get_content_type() == "application/json" else text


@pytest.fixture(scope="module")
def lab(experiments_root, tmp_path_factory):
    """`jupyter lab` from .venv, headless: no browser, loopback only, a random port and token,
    kernels over CurveZMQ as `make lab` starts them."""
    port, token = _free_port(), secrets.token_hex(16)
    runtime = tmp_path_factory.mktemp("jupyter-runtime")
    log = (runtime / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={NOTEBOOKS_DIR}",
         "--KernelManager.transport_encryption=auto", *(["--allow-root"] if os.geteuid() == 0 else [])],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime)})
    client = Lab(port, token, runtime / "server.log")
    deadline = time.monotonic() + 90
    while True:
        try:
            client.request("/api/status")
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"JupyterLab did not start: {(runtime / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield client
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


def test_lab_lists_the_notebooks_and_offers_the_project_kernel(lab):
    listed = {item["name"] for item in lab.request("/api/contents/")["content"]}
    assert {f"{name}.ipynb" for name in WORKFLOW} <= listed
    specs = lab.request("/api/kernelspecs")["kernelspecs"]
    assert KERNEL in specs, f"`make setup` registers the kernel {KERNEL!r}; the server offers {sorted(specs)}"
    # The kernel runs this checkout's .venv, not another clone's.
    assert Path(specs[KERNEL]["spec"]["argv"][0]).parent == Path(sys.executable).parent
    assert "JupyterLab" in lab.request("/lab")  # the application page itself is served


def _run(ws, session: str, code: str, timeout: float = 120) -> list[dict]:
    """Execute `code` on the kernel behind the websocket; its iopub outputs until idle."""
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({"header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                                   "session": session, "date": "", "version": "5.3"},
                        "parent_header": {}, "metadata": {}, "channel": "shell",
                        "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                                    "allow_stdin": False, "stop_on_error": True}}))
    outputs, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = json.loads(ws.recv())
        if msg.get("parent_header", {}).get("msg_id") != msg_id or msg.get("channel") != "iopub":
            continue
        kind = msg["msg_type"]
        if kind == "status" and msg["content"]["execution_state"] == "idle":
            return outputs
        if kind in ("stream", "display_data", "execute_result", "error"):
            outputs.append({"type": kind, **msg["content"]})
    pytest.fail(f"the kernel did not finish within {timeout} s: {code[:80]!r}")


def test_a_notebook_runs_through_the_registered_kernel_without_warnings(lab, experiments_root):
    import websocket  # websocket-client, a dependency of jupyter_server

    session = lab.request("/api/sessions", {"path": "01_setup.ipynb", "name": "01_setup.ipynb", "type": "notebook",
                                            "kernel": {"name": KERNEL}})
    kernel = session["kernel"]["id"]
    ws = websocket.create_connection(f"ws://{lab.base}/api/kernels/{kernel}/channels?token={lab.token}", timeout=120)
    try:
        nb = nbformat.read(NOTEBOOKS_DIR / "01_setup.ipynb", as_version=4)
        outputs = []
        for cell in (c for c in nb.cells if c.cell_type == "code"):
            tagged = "parameters" in cell.metadata.get("tags", [])
            outputs += _run(ws, session["id"], cell.source + ("\n" + SETUP_PARAMETERS if tagged else ""))
        # tqdm's notebook bars need ipywidgets: with it they are widgets, without it a warning.
        outputs += _run(ws, session["id"], "from tqdm.auto import tqdm\nfor _ in tqdm(range(3)): pass")
    finally:
        ws.close()
        lab.request(f"/api/sessions/{session['id']}", method="DELETE")
    errors = [o for o in outputs if o["type"] == "error"]
    assert not errors, errors[0]["traceback"][-1] if errors else ""
    text = json.dumps(outputs)
    assert "IProgress not found" not in text
    assert "without encryption" not in lab.log.read_text(), "kernels run over CurveZMQ, without the warning"
    assert "application/vnd.jupyter.widget-view+json" in text
    assert "generated: preset tiny" in text and "share of lookups they take" in text
    assert any("image/png" in o.get("data", {}) for o in outputs), "the id-skew plot is shown"
    assert (experiments_root / "lab-tiny" / "testdata").is_dir()
