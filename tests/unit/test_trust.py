"""A model file is data: bundles, checkpoints, ensemble specs and stored pruners name classes only from the
allow-list (recforge.utils.trust), and anything else is refused with one line before it is imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import yaml

from recforge import CONFIG_DIR
from recforge.errors import RecForgeError
from recforge.models.ensemble import EnsembleRecommender
from recforge.models.mf import MatrixFactorization
from recforge.tracking.bundle import Bundle, save_bundle
from recforge.tuning.pruning import build_pruner
from recforge.utils import trust as trust_module
from recforge.utils.trust import UntrustedTarget, is_trusted, shipped_targets, trust

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_user_trust(monkeypatch):
    """Each test starts from RecForge's own list: no trusted_targets left by another test, no environment."""
    monkeypatch.setattr(trust_module, "_registered", set())
    monkeypatch.delenv(trust_module.ENV_VAR, raising=False)


@pytest.fixture
def evil_module(tmp_path, monkeypatch):
    """An importable module that leaves a marker file when imported and a function that leaves another when
    called: a refused name must do neither."""
    package = tmp_path / "evilpkg"
    package.mkdir()
    marker = tmp_path / "imported"
    (package / "__init__.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"
        "def run(cmd):\n    Path(cmd).touch()\n"
        "class Model(__import__('torch').nn.Module):\n    def __init__(self, **kw):\n        super().__init__()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "evilpkg", raising=False)
    return marker


def make_bundle(folder: Path) -> Path:
    model = MatrixFactorization(n_users=3, n_items=4, embedding_dim=2)
    seen = sp.csr_matrix(np.array([[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0]], dtype=np.float32))
    return save_bundle(folder, model, "recforge.models.mf.MatrixFactorization",
                       {"n_users": 3, "n_items": 4, "embedding_dim": 2}, np.array([10, 11, 12]),
                       np.array([20, 21, 22, 23]), seen, {"dataset": "test"})


def test_recforge_own_classes_are_trusted_and_others_are_not():
    model_targets = {yaml.safe_load(p.read_text())["model"]["_target_"]
                     for p in (Path(CONFIG_DIR) / "model").glob("*.yaml")}
    assert model_targets <= shipped_targets(str(CONFIG_DIR))
    assert all(is_trusted(t) for t in model_targets)
    for target in ("recforge.models.ensemble.EnsembleRecommender", "recforge.losses.BPRLoss", "torch.optim.Adam",
                   "torch.optim.RMSprop", "torch.optim.lr_scheduler.OneCycleLR", "optuna.pruners.MedianPruner",
                   "recforge.data.preprocess.KCore", "pytorch_lightning.callbacks.EarlyStopping"):
        assert is_trusted(target), target
    for target in ("subprocess.getoutput", "os.system", "pandas.read_pickle", "builtins.eval",
                   "recforge.utils.io.atomic_write_text", "torch.load", "torch.optim.*", "torch.optim", "",
                   "recforge.models.mf.MatrixFactorization; import os", None, 3):
        assert not is_trusted(target), target


def test_user_trust_by_config_pattern_and_environment(monkeypatch):
    assert not is_trusted("mypkg.models.MyModel")
    trust("mypkg.models.MyModel")
    assert is_trusted("mypkg.models.MyModel") and not is_trusted("mypkg.models.Other")
    trust("otherpkg.*")
    assert is_trusted("otherpkg.deep.Model") and not is_trusted("otherpkgx.Model")
    monkeypatch.setenv(trust_module.ENV_VAR, "envpkg.Model, more.*")
    assert is_trusted("envpkg.Model") and is_trusted("more.x.Y")
    with pytest.raises(RecForgeError, match="not a class path"):
        trust("mypkg; rm -rf /")


def test_bundle_naming_a_function_is_refused_before_import(tmp_path, evil_module):
    folder = make_bundle(tmp_path / "model")
    assert Bundle.load(folder).recommend(np.array([10]), k=2)["item"].tolist()  # the honest bundle loads
    command_marker = tmp_path / "ran"
    for target in ("subprocess.getoutput", "evilpkg.run"):
        torch.save({"target": target, "kwargs": {"cmd": str(command_marker)}}, folder / "spec.pt")
        with pytest.raises(UntrustedTarget) as info:
            Bundle.load(folder)
        assert "\n" not in str(info.value) and target in str(info.value) and "spec.pt" in str(info.value)
    assert not command_marker.exists() and not evil_module.exists()


def test_trusted_user_module_must_still_be_a_class(tmp_path, evil_module):
    folder = make_bundle(tmp_path / "model")
    torch.save({"target": "evilpkg.run", "kwargs": {"cmd": str(tmp_path / "ran")}}, folder / "spec.pt")
    trust("evilpkg.*")
    with pytest.raises(UntrustedTarget, match="not a class"):
        Bundle.load(folder)
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("damage", ["truncated model.pt", "missing items.parquet", "foreign spec.pt",
                                    "weights of another model", "mixed runs"])
def test_corrupt_bundles_are_one_line_errors_naming_the_file(tmp_path, damage):
    folder = make_bundle(tmp_path / "model")
    if damage == "truncated model.pt":
        data = (folder / "model.pt").read_bytes()
        (folder / "model.pt").write_bytes(data[: len(data) // 2])
        expected = "model.pt"
    elif damage == "missing items.parquet":
        (folder / "items.parquet").unlink()
        expected = "items.parquet"
    elif damage == "foreign spec.pt":
        (folder / "spec.pt").write_text("not a torch file")
        expected = "spec.pt"
    elif damage == "weights of another model":
        other = MatrixFactorization(n_users=5, n_items=4, embedding_dim=2)
        torch.save(other.state_dict(), folder / "model.pt")
        expected = "model.pt"
    else:
        sp.save_npz(folder / "seen.npz", sp.csr_matrix((2, 4), dtype=np.float32))
        expected = "seen.npz"
    with pytest.raises(RecForgeError) as info:
        Bundle.load(folder)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_ensemble_member_naming_a_function_is_refused(tmp_path, evil_module):
    marker = tmp_path / "ran"
    members = [{"target": "evilpkg.run", "kwargs": {"cmd": str(marker)}}]
    with pytest.raises(UntrustedTarget, match="ensemble member"):
        EnsembleRecommender(members, [1.0], n_items=4)
    assert not marker.exists() and not evil_module.exists()


def test_stored_pruner_naming_a_function_is_refused(tmp_path, evil_module):
    marker = tmp_path / "ran"
    with pytest.raises(UntrustedTarget, match="pruner"):
        build_pruner({"_target_": "evilpkg.run", "cmd": str(marker)})
    assert not marker.exists() and not evil_module.exists()
    assert type(build_pruner({"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 2})).__name__ == \
        "MedianPruner"


def malicious_checkpoint(tmp_path: Path, tiny_cfg, where: str) -> tuple[Path, Path]:
    """A real checkpoint of a tiny run whose stored config then names ``pandas.read_pickle`` (which Hydra's
    own block list lets through) at ``where``."""
    from omegaconf import OmegaConf

    from recforge.train import train

    cfg = tiny_cfg("trainer.max_epochs=1")
    train(cfg)
    path = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    stored = OmegaConf.create(checkpoint["recforge_config"])
    marker = tmp_path / "pickled"
    if where == "model":
        stored.model = {"_target_": "pandas.read_pickle", "filepath_or_buffer": str(marker)}
    else:  # nested, where a look at the top-level groups alone would miss it
        stored.data.preprocess = [{"_target_": "pandas.read_pickle", "filepath_or_buffer": str(marker)}]
    checkpoint["recforge_config"] = OmegaConf.to_yaml(stored)
    bad = tmp_path / "bad.ckpt"
    torch.save(checkpoint, bad)
    return bad, marker


@pytest.mark.parametrize("where", ["model", "nested"])
def test_checkpoint_config_naming_a_function_is_refused(tmp_path, tiny_cfg, where):
    from recforge.restore import load_checkpoint

    bad, _ = malicious_checkpoint(tmp_path, tiny_cfg, where)
    with pytest.raises(UntrustedTarget, match="pandas.read_pickle"):
        load_checkpoint(bad)
    with pytest.raises(UntrustedTarget, match="pandas.read_pickle"):
        Bundle.from_checkpoint(bad)  # recforge-serve --ckpt


def test_recforge_eval_refuses_a_malicious_checkpoint_with_one_line(tmp_path, tiny_cfg):
    bad, _ = malicious_checkpoint(tmp_path, tiny_cfg, "model")
    result = subprocess.run([sys.executable, "-m", "recforge.eval", f"ckpt_path={bad}",
                             f"hydra.run.dir={tmp_path / 'eval'}", f"paths.log_dir={tmp_path / 'logs'}"],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "pandas.read_pickle" in errors[0] and "Traceback" not in result.stderr


def test_serving_clis_take_trust_flags():
    import argparse

    from recforge.serving.registry import add_model_source_args

    parser = argparse.ArgumentParser()
    add_model_source_args(parser)
    parser.parse_args(["--bundle", "x", "--trust", "mypkg.models.MyModel", "--trust", "lab.*"])
    assert is_trusted("mypkg.models.MyModel") and is_trusted("lab.recs.Model")
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--bundle", "x", "--trust", "os.system; true"])
    assert info.value.code == 2
