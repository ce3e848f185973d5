"""The command line is checked before Hydra runs: an unknown option or key is one line with the nearest valid one
and exit code 2 (Hydra's own report is 30+ lines and exit code 1)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from recforge.cli import preflight


@pytest.mark.parametrize("argv,expected", [
    (["data=ml100k"], "data=ml100k is not an option of 'data'; did you mean data=ml-100k"),
    (["model=nosuchmodel"], "model=nosuchmodel is not an option of 'model'; (recforge list model shows all"),
    (["trainer.max_epoch=3"], "trainer.max_epoch is not a key of trainer; did you mean trainer.max_epochs"),
    (["+trainer.max_epoch=3"], "pytorch_lightning.Trainer takes no argument 'max_epoch'; did you mean "
                               "trainer.max_epochs"),
    (["-m", "model=bpr,nosuch"], "model=nosuch is not an option of 'model'"),
    (["optimizer.lr=0.1,0.01", "-m", "seeed=3"], "seeed is not a key at the top level; did you mean seed?"),
    (["model=bpr", "optimizer.lr=[1"], "cannot read the command line"),
])
def test_mistakes_are_one_line_with_the_nearest_valid_name(argv, expected, capsys):
    with pytest.raises(SystemExit) as info:
        preflight("train", argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err


@pytest.mark.parametrize("argv", [
    [], ["model=neumf", "loss=bce", "trainer.max_epochs=2"], ["-m", "model=mf,neumf", "optimizer.lr=0.1,0.01"],
    ["-m", "optimizer.lr=tag(log, interval(0.001, 0.1))"], ["+trainer.gradient_clip_val=1.0"], ["--help"],
    ["hydra.run.dir=/tmp/x", "hydra/sweeper=optuna"],
])
def test_valid_command_lines_pass(argv):
    preflight("train", argv)


def test_other_commands_are_checked_against_their_own_config(capsys):
    with pytest.raises(SystemExit):
        preflight("eval", ["ckpt_pat=x.ckpt"])
    assert "did you mean ckpt_path?" in capsys.readouterr().err


def test_the_console_entry_exits_2_with_one_line():
    result = subprocess.run([sys.executable, "-m", "recforge.train", "model=nosuchmodel"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "model=nosuchmodel" in result.stderr
