"""CLI: clear messages on bad input, nothing written."""

import subprocess
import sys

import pytest

from trainer.cli import main


def test_help_for_both_entry_points():
    for module in ("trainer", "service"):
        done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "usage" in done.stdout.lower()


def test_unknown_model_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fit", "--model", "nope", "--dataset", str(tmp_path), "--out", str(out)]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert not out.exists()


def test_bad_config_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    from trainer.data.features import write_mmrec_inter
    from trainer.data.synthetic import planted_dataset

    data_dir = tmp_path / "planted"
    data_dir.mkdir()
    write_mmrec_inter(planted_dataset(n_users=30, n_items=40, seed=0), data_dir / "planted.inter")
    config = tmp_path / "bad.yaml"
    config.write_text("model_params: {bogus: 1}\n")
    out = tmp_path / "run"
    assert main(["fit", "--model", "mf", "--dataset", str(data_dir), "--out", str(out), "--config", str(config)]) == 2
    assert "unknown parameter(s) for model 'mf': ['bogus']" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("args", [["fit", "--model", "mf"], ["compare", "--dataset", "x", "--out", "y"]])
def test_missing_arguments_exit_with_usage(args):
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
