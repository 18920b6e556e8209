"""`make lab` serves the notebooks in JupyterLab with the project's kernel (headless)."""

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(shutil.which("make") is None or not (REPO / ".venv" / "bin" / "jupyter").exists(),
                    reason="needs make and the README's set-up (.venv with the lab extra)")
def test_make_lab_serves_the_notebooks_with_the_project_kernel(tmp_path):
    port, token = _free_port(), "agglib-test"
    args = f"--no-browser --port={port} --IdentityProvider.token={token} --ServerApp.ip=127.0.0.1"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg")}
    proc = subprocess.Popen(["make", "-o", ".venv/.installed", "lab", f"LAB_ARGS={args}"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def get(path):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}?token={token}", timeout=5) as r:
                return json.loads(r.read())

        deadline, contents = time.time() + 120, None
        while time.time() < deadline and proc.poll() is None:
            try:
                contents = get("/api/contents")
                break
            except OSError:
                time.sleep(1)
        assert contents is not None, proc.stdout.read().decode(errors="replace") if proc.poll() is not None else "timeout"
        names = {c["name"] for c in contents["content"]}
        assert {f"{n:02d}" for n in range(1, 11)} <= {n[:2] for n in names if n.endswith(".ipynb")}
        specs = get("/api/kernelspecs")["kernelspecs"]
        assert any(s["spec"]["display_name"] == "Python 3 (agglib)" for s in specs.values()), specs
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            proc.wait(timeout=30)
