"""``recforge-recommend`` into a folder of parts: a run killed with SIGKILL after its first part resumes to exactly the
rows of an uninterrupted run, a manifest of another job is a one-line error (``--overwrite`` replaces it), exact
scoring in blocks changes nothing, and ranking through the bundle's ANN index gives the service's lists."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from recforge.models.mf import MatrixFactorization
from recforge.serving import batch
from recforge.serving.batch import MANIFEST, main as recommend_main, part_name, rank_chunk
from recforge.tracking.bundle import Bundle, save_bundle
from tests.conftest import REPO


def mf_bundle(directory: Path, n_users: int, n_items: int, seed: int = 0, density: float = 0.05, dim: int = 8,
              reranker=None) -> Path:
    """An MF bundle with biases over user ids 0.. and item ids 1000.. (random weights: the ranking code does not
    care whether they were trained)."""
    torch.manual_seed(seed)
    kwargs = {"n_users": n_users, "n_items": n_items, "embedding_dim": dim, "use_bias": True}
    model = MatrixFactorization(**kwargs)
    with torch.no_grad():
        model.item_bias.weight.normal_()
        model.user_bias.weight.normal_()
    seen = sp.random(n_users, n_items, density=density, random_state=seed, format="csr")
    return save_bundle(directory, model, "recforge.models.mf.MatrixFactorization", kwargs, np.arange(n_users),
                       np.arange(1000, 1000 + n_items), seen, {}, reranker)


def parts(folder: Path) -> list[Path]:
    return sorted(folder.glob("part-*.parquet"))


def read_parts(folder: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in parts(folder)], ignore_index=True)


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "recforge.serving.batch", "--no-progress", *args]


ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}


def test_a_killed_run_resumes_to_exactly_the_rows_of_an_uninterrupted_run(tmp_path, capsys):
    model = mf_bundle(tmp_path / "model", n_users=60_000, n_items=80)
    args = ["--bundle", str(model), "--k", "7", "--chunk-size", "200"]  # 300 parts
    recommend_main([*args, "--output", str(tmp_path / "whole"), "--no-progress"])
    whole = read_parts(tmp_path / "whole")
    assert len(parts(tmp_path / "whole")) == 300 and len(whole) == 7 * 60_000

    out = tmp_path / "killed"
    process = subprocess.Popen(command(*args, "--output", str(out)), env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / part_name(0)).exists():
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no part after 120 s"
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(parts(out))
    manifest = json.loads((out / MANIFEST).read_text())
    assert process.returncode == -signal.SIGKILL and 1 <= done < 300, done  # killed mid-way
    assert manifest["complete"] is False and manifest["n_parts"] == 300 and manifest["k"] == 7
    assert manifest["chunk_size"] == 200 and manifest["n_users"] == 60_000
    mtimes = {p.name: p.stat().st_mtime_ns for p in parts(out)}
    (out / ".part-999999.parquet.0123456789ab.tmp").write_bytes(b"half a part")  # as a kill mid-write leaves
    (out / f".{MANIFEST}.0123456789ab.tmp").write_bytes(b"{")

    resumed = subprocess.run(command(*args, "--output", str(out)), env=ENV, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{done} of 300 parts already there" in resumed.stdout
    assert {p.name: p.stat().st_mtime_ns for p in parts(out)[:done]} == mtimes  # the complete parts were kept
    assert not list(out.glob(".*"))  # no temporary file left
    pd.testing.assert_frame_equal(read_parts(out), whole)
    pd.testing.assert_frame_equal(pd.read_parquet(out), whole)  # the folder reads as one table, manifest left out
    assert json.loads((out / MANIFEST).read_text())["complete"] is True

    capsys.readouterr()
    recommend_main([*args, "--output", str(out), "--no-progress"])  # a complete output: nothing to do
    assert "300 of 300 parts already there" in capsys.readouterr().out


def test_a_manifest_of_another_job_is_a_one_line_error_and_overwrite_replaces_it(tmp_path, capsys):
    model = mf_bundle(tmp_path / "model", n_users=50, n_items=30)
    other = mf_bundle(tmp_path / "other", n_users=50, n_items=30, seed=1)
    out = tmp_path / "recs"
    base = ["--output", str(out), "--no-progress"]
    recommend_main(["--bundle", str(model), "--k", "5", "--chunk-size", "16", *base])
    first = read_parts(out)
    capsys.readouterr()
    for changed, named in [(["--bundle", str(model), "--k", "6", "--chunk-size", "16"], "k 5 there, 6 now"),
                           (["--bundle", str(model), "--k", "5", "--chunk-size", "8"], "chunk_size 16 there, 8 now"),
                           (["--bundle", str(model), "--k", "5", "--chunk-size", "16", "--users", "1,2,3"], "n_users"),
                           (["--bundle", str(model), "--k", "5", "--chunk-size", "16", "--include-seen"],
                            "exclude_seen True there, False now"),
                           (["--bundle", str(other), "--k", "5", "--chunk-size", "16"], "model_sha256")]:
        with pytest.raises(SystemExit) as stopped:
            recommend_main([*changed, *base])
        error = capsys.readouterr().err
        assert stopped.value.code == 2 and error.count("\n") == 1, error
        assert error.startswith(f"error: {out / MANIFEST}: {out} holds recommendations of another run (")
        assert named in error
        assert error.rstrip().endswith("use a new --output to keep them, or --overwrite to replace them")
    pd.testing.assert_frame_equal(read_parts(out), first)  # refused runs left the parts alone
    recommend_main(["--bundle", str(other), "--k", "5", "--chunk-size", "8", "--overwrite", *base])
    assert len(parts(out)) == 7  # 50 users in chunks of 8 (the 4 parts of 16 are gone)
    pd.testing.assert_frame_equal(read_parts(out), Bundle.load(other).recommend(np.arange(50), k=5))

    (out / MANIFEST).write_text("{not json")
    with pytest.raises(SystemExit):
        recommend_main(["--bundle", str(other), "--k", "5", "--chunk-size", "8", *base])
    assert f"{out / MANIFEST}: unreadable manifest" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):  # a folder this job did not write is never emptied
        with pytest.raises(SystemExit):
            recommend_main(["--bundle", str(model), "--output", str(foreign), "--no-progress", *extra])
        assert "the folder has files but no _manifest.json" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "mine" and not parts(foreign)


def test_exact_ranking_in_score_blocks_changes_nothing(tmp_path, monkeypatch):
    bundle = Bundle.load(mf_bundle(tmp_path / "model", n_users=40, n_items=30))
    users = np.concatenate([np.arange(40), [10 ** 6]])  # and an unknown user
    whole = bundle.recommend(users, k=6)
    monkeypatch.setattr(batch, "SCORE_BLOCK", 70)  # two users of 30 items per score block
    pd.testing.assert_frame_equal(rank_chunk(bundle, users, 6), whole)


def test_ranking_through_the_index_gives_the_services_lists(tmp_path, capsys):
    """A flat index gives the exact lists; an HNSW index searched with a small candidate list gives, user by user,
    the lists the service answers through the same index (the same search per user, whatever the chunk)."""
    pytest.importorskip("faiss")
    from recforge.retrieval.ann import AnnIndex
    from recforge.serving.core import ServedModel
    from recforge.serving.index import build_for_bundle
    from recforge.serving.registry import ModelRef

    model = mf_bundle(tmp_path / "model", n_users=300, n_items=400, density=0.08)
    build_for_bundle(model, AnnIndex(kind="flat"))
    exact, ann = tmp_path / "exact", tmp_path / "ann"
    recommend_main(["--bundle", str(model), "--output", str(exact), "--k", "10", "--chunk-size", "64", "--no-progress"])
    assert ", exact)" in capsys.readouterr().out  # 400 items: below the default --ann-min-items
    recommend_main(["--bundle", str(model), "--output", str(ann), "--k", "10", "--chunk-size", "64", "--no-progress",
                    "--ann-min-items", "400"])
    assert ", ann:flat)" in capsys.readouterr().out
    assert json.loads((ann / MANIFEST).read_text())["retrieval"]["ann"]["kind"] == "flat"
    exact_rows, ann_rows = read_parts(exact), read_parts(ann)
    assert exact_rows[["user", "item", "rank", "fallback"]].equals(ann_rows[["user", "item", "rank", "fallback"]])
    assert np.allclose(exact_rows["score"], ann_rows["score"], atol=1e-5)

    build_for_bundle(model, AnnIndex(kind="hnsw", m=4, ef_construction=8, ef_search=8))
    hnsw = tmp_path / "hnsw"
    recommend_main(["--bundle", str(model), "--output", str(hnsw), "--k", "10", "--chunk-size", "64", "--no-progress",
                    "--ann-min-items", "0", "--users", ",".join(map(str, [*range(300), 99999]))])
    rows = read_parts(hnsw)
    served = ServedModel(Bundle.load(model), ModelRef("x"), ann_min_items=0)
    assert served.info()["retrieval"] == "ann:hnsw"
    recall = []
    for user, group in rows.groupby("user", sort=False):
        items, scores, fallback = served.recommend(int(user), 10)
        assert group["item"].tolist() == items and np.allclose(group["score"], scores) and fallback == (user == 99999)
        want = exact_rows.loc[exact_rows["user"] == user, "item"]
        recall.append(len(set(items) & set(want)) / 10 if len(want) else 1.0)
    assert np.mean(recall) < 1.0  # a coarse graph misses some of the exact top 10: the index was used
