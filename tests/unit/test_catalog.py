"""``recforge list`` names every option of every config group with a description; runs map back to the option
file they came from; docs/sweeps.md lists every search space with its parameters."""

from __future__ import annotations

import yaml

from recforge import CONFIG_DIR as CONF
from recforge.catalog import main
from recforge.utils.options import description, matching_option
from tests.conftest import REPO


def test_every_option_of_every_group_is_listed_with_a_description(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    folders = sorted(p for p in CONF.iterdir() if p.is_dir())
    assert {"model", "data", "split", "loss", "sampler", "optimizer", "scheduler", "experiment",
            "hparams_search"} <= {p.name for p in folders}
    for folder in folders:
        start = lines.index(f"{folder.name}  (recforge-train {folder.name}=<option>)")
        block = lines[start + 1:]
        block = block[:block.index("")] if "" in block else block
        assert all(line.startswith("  ") for line in block)  # RecForge's own options (a user's are marked *)
        listed = {line.split()[0]: line.split(None, 1)[1] for line in block}
        options = {f.stem for f in folder.glob("*.yaml")}
        assert set(listed) == options, folder.name
        for name, text in listed.items():
            assert text.strip() and text == description(folder / f"{name}.yaml"), f"{folder.name}/{name}"


def test_description_is_the_first_header_comment_line(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("# @package _global_\n# BPR-MF: no biases.\n# More.\nmodel:\n  a: 1  # not this\n")
    assert description(path) == "BPR-MF: no biases."
    path.write_text("# A sentence that goes\n# on in the file.\nkey: 1\n")
    assert description(path) == "A sentence that goes ..."
    path.write_text("key: 1\n# a comment after the first key is no header\n")
    assert description(path) == ""


def test_groups_can_be_chosen_and_an_unknown_one_is_an_error(capsys):
    assert main(["list", "loss", "sampler"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("loss  (recforge-train loss=<option>)") and "\nsampler  (" in out and "model  (" not in out
    assert main(["list", "models"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown config group 'models'; groups: ") and "model" in err


def test_a_users_config_folder_joins_the_listing_and_the_matching(tmp_path, monkeypatch, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text("# @package _global_\n# My own model.\nmodel:\n"
                                                  "  _target_: mypkg.models.Mine\n  size: 8\n")
    (tmp_path / "model" / "pop.yaml").write_text("# My popularity baseline, replacing RecForge's.\nmodel:\n"
                                                 "  _target_: mypkg.models.Pop\n")
    monkeypatch.setenv("RECFORGE_CONFIG_PATH", str(tmp_path))
    assert main(["list", "model"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split() == ["*mine", "My", "own", "model."] for line in lines)
    assert any(line.startswith(" *pop ") and "replacing RecForge's" in line for line in lines)
    assert any(line.startswith("  bpr ") for line in lines)
    assert matching_option("model", {"model._target_": "mypkg.models.Mine", "model.size": "8"}) == "mine"


def test_a_runs_params_lead_back_to_its_option_file():
    bpr = {"model._target_": "recforge.models.mf.MatrixFactorization", "model.embedding_dim": "64",
           "model.use_bias": "False", "model.init_std": "0.01", "model.l2_reg": "0.0", "model.similarity": "dot"}
    assert matching_option("model", bpr) == "bpr"
    assert matching_option("model", {**bpr, "model.embedding_dim": "16"}) == "bpr"  # an override keeps it bpr
    mf = {k: v for k, v in bpr.items() if k != "model.similarity"}   # mf.yaml sets no similarity
    assert matching_option("model", {**mf, "model.use_bias": "True", "model.l2_reg": "0.1"}) == "mf"
    assert matching_option("model", {"model._target_": "mypkg.MyModel"}) is None
    assert matching_option("model", {}) is None
    split = {"split._target_": "recforge.data.split.LeaveOneOutSplit", "split.min_interactions": "3",
             "split.seed": "42"}
    assert matching_option("split", split) == "leave_one_out"  # ${seed} in the file is no evidence either way


def test_every_model_file_maps_back_to_itself():
    """A run logs each model value as ``str(value)``: with a file's own values, the file is found (so two files
    of one class must differ in a value, or the table could not tell their runs apart)."""
    for path in sorted((CONF / "model").glob("*.yaml")):
        node = yaml.safe_load(path.read_text())["model"]
        assert matching_option("model", {f"model.{k}": str(v) for k, v in node.items()}) == path.stem


def test_sweeps_doc_lists_every_search_space_with_its_parameters():
    doc = (REPO / "docs" / "sweeps.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line for line in doc.splitlines() if line.startswith("| `")}
    for path in sorted((CONF / "hparams_search").glob("*.yaml")):
        assert path.stem in rows, f"docs/sweeps.md has no row for {path.name}"
        space = yaml.safe_load(path.read_text())["hydra"]["sweeper"]["params"]
        for key, value in space.items():
            assert f"`{key}`: `{value}`" in rows[path.stem], f"{path.name}: {key}"
