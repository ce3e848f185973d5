"""RecForge as a library: the wheel, installed into a fresh virtual environment without the source tree, trains,
sweeps and serves (its configs travel inside the package)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = ["data.n_users=120", "data.n_items=60", "data.mean_interactions=12", "trainer.max_epochs=2",
        "datamodule.batch_size=256", "tracking=none"]


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A virtual environment holding only the built wheel. Its dependencies come from this environment's
    site-packages through a path entry, whose own .pth files (the editable install that points at src/) are
    not read, so ``import recforge`` can only find the wheel."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(root / "dist"), str(REPO)], check=True, capture_output=True, timeout=600)
    wheel = next((root / "dist").glob("recforge-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    str(wheel)], check=True, capture_output=True, timeout=600)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    work = root / "work"   # a folder with no source tree in it
    work.mkdir()
    return work, env


def run(work: Path, env: dict[str, str], *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(list(args), cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_the_installed_package_is_the_wheel(fresh_env):
    work, env = fresh_env
    where = run(work, env, "python", "-c", "import recforge; print(recforge.__file__, recforge.CONFIG_DIR)").stdout
    assert str(REPO / "src") not in where and "site-packages" in where
    assert "conf" in where and (Path(where.split()[1]) / "train.yaml").is_file()


def test_train_sweep_and_serve_from_the_wheel(fresh_env):
    work, env = fresh_env
    out = work / "run"
    run(work, env, "recforge-train", *TINY, f"paths.output_dir={out}", f"paths.log_dir={work / 'logs'}")
    assert (out / "metrics.json").is_file() and (out / "model" / "spec.pt").is_file()

    sweep = run(work, env, "recforge-train", "-m", "hparams_search=bpr", "hydra.sweeper.n_trials=2",
                "hydra/sweeper/pruner=none", *TINY, f"paths.log_dir={work / 'logs'}",
                f"hydra.sweep.dir={work / 'sweep'}")
    assert "best" in sweep.stdout

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(["recforge-serve", "--bundle", str(out / "model"), "--port", str(port)], cwd=work,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                assert time.monotonic() < deadline, "the service did not answer within 120 s"
                time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(timeout=30)
