"""CLI: clear messages on bad input, nothing written."""

import subprocess
import sys

import pytest

from trainer.cli import main


def _planted_dir(tmp_path, n_users=40, n_items=50):
    """A planted synthetic dataset written as an MMRec directory under ``tmp_path``."""
    from trainer.data.features import write_mmrec_inter
    from trainer.data.synthetic import planted_dataset

    data_dir = tmp_path / "planted"
    data_dir.mkdir()
    write_mmrec_inter(planted_dataset(n_users=n_users, n_items=n_items, seed=0), data_dir / "planted.inter")
    return data_dir


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
    data_dir = _planted_dir(tmp_path, n_users=30, n_items=40)
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


def test_compare_in_parallel_processes_matches_the_serial_run(tmp_path):
    import json

    data_dir = _planted_dir(tmp_path)
    common = ["compare", "--dataset", str(data_dir), "--variant", "mf=mf", "--seeds", "1", "2",
              "--max-epochs", "3", "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "serial")]) == 0
    assert main([*common, "--out", str(tmp_path / "parallel"), "--jobs", "2"]) == 0
    serial = json.loads((tmp_path / "serial" / "compare.json").read_text())
    parallel = json.loads((tmp_path / "parallel" / "compare.json").read_text())
    assert [r["seed"] for r in parallel] == [1, 2]
    for one, other in zip(serial, parallel):
        assert one["valid_recall@20"] == pytest.approx(other["valid_recall@20"], abs=1e-6)
        assert one["test_recall@20"] == pytest.approx(other["test_recall@20"], abs=1e-6)
    assert (tmp_path / "parallel" / "mf" / "seed2" / "bundles" / "current").exists()


def test_tune_in_parallel_writes_every_config_and_a_preset_without_machine_settings(tmp_path):
    import json

    import yaml

    data_dir = _planted_dir(tmp_path)
    preset = tmp_path / "best.yaml"
    assert main(["tune", "--model", "mf", "--dataset", str(data_dir), "--out", str(tmp_path / "tune"),
                 "--grid", "train.lr=0.01,0.001", "--max-epochs", "2", "--max-seconds", "600", "--device", "cpu",
                 "--jobs", "2", "--write-preset", str(preset)]) == 0
    rows = json.loads((tmp_path / "tune" / "tune.json").read_text())
    assert [r["params"]["train.lr"] for r in rows] == [0.01, 0.001]
    assert all(r["train"]["max_seconds"] == 600 for r in rows)
    written = yaml.safe_load(preset.read_text())
    assert written["train"]["lr"] == max(rows, key=lambda r: r["valid_recall@20"])["train"]["lr"]
    assert not {"seed", "device", "max_seconds"} & set(written["train"])


def test_config_values_are_type_checked_and_yaml_exponents_read_as_numbers(tmp_path):
    from trainer.config import ConfigError, resolve_run_config
    from trainer.models.registry import build_config

    config = tmp_path / "c.yaml"
    config.write_text("model_params: {reg_weight: 1e-5}\ntrain: {lr: 5e-3, max_seconds: 60}\n")
    run = resolve_run_config("lightgcn", None, config)
    assert run.train.lr == 0.005 and isinstance(run.train.lr, float) and run.train.max_seconds == 60.0
    assert build_config("lightgcn", run.model_params).reg_weight == 1e-5
    with pytest.raises(ConfigError, match="n_layers must be an integer, got 'two'"):
        build_config("lightgcn", {"n_layers": "two"})
    config.write_text("train: {batch_size: 2.5}\n")
    with pytest.raises(ConfigError, match="batch_size must be an integer"):
        resolve_run_config("lightgcn", None, config)
    config.write_text("train: {lr: fast}\n")
    with pytest.raises(ConfigError, match="lr must be a number, got 'fast'"):
        resolve_run_config("lightgcn", None, config)


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ("eval_every: 0", "train.eval_every must be >= 1, got 0"),
        ("batch_size: 0", "train.batch_size must be >= 1, got 0"),
        ("patience: -1", "train.patience must be >= 1, got -1"),
        ("lr: -0.001", "train.lr must be >= 0"),
        ("max_seconds: 0", "train.max_seconds must be > 0"),
        ("stopping_metric: recall@100", "train.stopping_metric must be one of"),
    ],
)
def test_out_of_range_training_settings_are_refused_before_anything_is_written(tmp_path, capsys, train, message):
    data_dir = _planted_dir(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(f"train: {{{train}}}\n")
    out = tmp_path / "run"
    assert main(["fit", "--model", "mf", "--dataset", str(data_dir), "--out", str(out), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(config) in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ("train.bogus=1", "unknown train keys ['bogus']"),
        ("train.batch_size=256,2.5", "batch_size must be an integer, got 2.5"),
        ("model_params.n_layers=two", "n_layers must be an integer, got 'two'"),
        ("model_params.bogus=1", "unknown parameter(s) for model 'lightgcn': ['bogus']"),
    ],
)
def test_tune_checks_every_grid_config_before_training_and_writes_nothing(tmp_path, capsys, grid, message):
    data_dir = _planted_dir(tmp_path)
    out = tmp_path / "tune"
    assert main(["tune", "--model", "lightgcn", "--dataset", str(data_dir), "--out", str(out), "--grid", grid]) != 0
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_compare_prints_differences_to_the_baseline(tmp_path, capsys):
    data_dir = _planted_dir(tmp_path)
    out = tmp_path / "cmp"
    assert main(["compare", "--dataset", str(data_dir), "--out", str(out), "--variant", "one=mf",
                 "--variant", "two=mf", "--seeds", "1", "2", "--max-epochs", "2", "--device", "cpu",
                 "--baseline", "two"]) == 0
    written = (out / "compare.md").read_text()
    assert written.strip() == capsys.readouterr().out.strip()
    assert "| variant | model | seeds |" in written
    assert "test R@20 − two (95% CI)" in written
    assert "\n| one | " in written.split("test R@20 CI excludes 0")[1]


@pytest.mark.parametrize(
    ("variants", "extra", "message"),
    [
        (["a=mf", "b=mf"], ["--baseline", "c"], "baseline 'c' is not one of the variant labels ['a', 'b']"),
        (["a=mf", "a=mf"], [], "variant labels must be distinct, got ['a', 'a']"),
        (["w/o x=mf"], [], "variant label 'w/o x' must be a non-empty name without '/'"),
        (["..=mf"], [], "variant label '..' must be a non-empty name"),
    ],
)
def test_compare_refuses_bad_variant_labels_before_training(tmp_path, capsys, variants, extra, message):
    out = tmp_path / "cmp"
    args = ["compare", "--dataset", str(tmp_path / "no-such-dataset"), "--out", str(out), *extra]
    for variant in variants:
        args += ["--variant", variant]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_compare_resume_reuses_finished_runs_and_refuses_other_settings(tmp_path, capsys):
    import json

    data_dir = _planted_dir(tmp_path)
    out = tmp_path / "cmp"
    common = ["compare", "--dataset", str(data_dir), "--out", str(out), "--seeds", "1", "2", "--device", "cpu"]
    assert main([*common, "--variant", "a=mf", "--max-epochs", "2"]) == 0
    first = json.loads((out / "compare.json").read_text())
    checkpoint = out / "a" / "seed1" / "checkpoint.pt"
    trained_at = checkpoint.stat().st_mtime_ns
    # a second variant is added: "a" is reused (not trained again), "b" is trained
    assert main([*common, "--variant", "a=mf", "--variant", "b=mf", "--max-epochs", "2", "--resume"]) == 0
    assert checkpoint.stat().st_mtime_ns == trained_at
    rows = json.loads((out / "compare.json").read_text())
    assert [(r["label"], r["seed"]) for r in rows] == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    assert [r["test_recall@20"] for r in rows[:2]] == [r["test_recall@20"] for r in first]
    assert (out / "b" / "seed2" / "metrics.json").is_file()
    capsys.readouterr()
    # other settings for a finished run: refused before anything trains, nothing overwritten
    assert main([*common, "--variant", "a=mf", "--variant", "c=mf", "--max-epochs", "3", "--resume"]) == 2
    assert "holds a finished run with another setting (train.max_epochs)" in capsys.readouterr().err
    assert checkpoint.stat().st_mtime_ns == trained_at
    assert not (out / "c").exists()
    assert json.loads((out / "compare.json").read_text()) == rows
    # settings that act only on warm-started runs do not matter to these cold runs, nor does their absence from a
    # run recorded before they existed
    metrics_path = out / "a" / "seed1" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    for key in ("warm_start_lr", "warm_start_shrink"):
        del metrics["config"]["train"][key]
    metrics_path.write_text(json.dumps(metrics))
    warm_only = tmp_path / "warm.yaml"
    warm_only.write_text("train:\n  warm_start_lr: 0.0003\n  warm_start_shrink: 0.5\n")
    assert main([*common, "--variant", f"a=mf:{warm_only}", "--max-epochs", "2", "--resume"]) == 0
    assert checkpoint.stat().st_mtime_ns == trained_at


def test_an_interrupted_refit_leaves_the_finished_run_in_its_directory_whole(tmp_path, monkeypatch):
    import json

    import torch

    import trainer.pipeline as pipeline

    data_dir = _planted_dir(tmp_path)
    out = tmp_path / "run"
    quick = {"max_epochs": 2, "eval_every": 1, "device": "cpu"}
    first = pipeline.run_fit("mf", data_dir, out, train_overrides=quick, progress=False)
    real_fit = pipeline.fit

    def interrupted_fit(*args, **kwargs):
        real_fit(*args, **kwargs)  # trains and checkpoints, then the user presses Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "fit", interrupted_fit)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_fit("lightgcn", data_dir, out, train_overrides=quick, progress=False)
    assert json.loads((out / "metrics.json").read_text())["test"] == first["test"]
    assert torch.load(out / "checkpoint.pt", weights_only=False)["model"] == "mf"
    assert (out / "checkpoint.pt.partial").exists()  # the interrupted run's, beside it
    monkeypatch.setattr(pipeline, "fit", real_fit)
    second = pipeline.run_fit("lightgcn", data_dir, out, train_overrides=quick, progress=False)
    assert json.loads((out / "metrics.json").read_text())["model"] == "lightgcn" == second["model"]
    assert torch.load(out / "checkpoint.pt", weights_only=False)["model"] == "lightgcn"
    assert not (out / "checkpoint.pt.partial").exists()


def test_compare_resume_refuses_a_run_trained_on_other_data_at_the_same_path(tmp_path, capsys):
    """The dataset directory is rebuilt with other features (another encoder version, say) after a run finished:
    the run's recorded fingerprint no longer matches, so --resume refuses to count it as a run on this data."""
    import json

    import numpy as np

    data_dir = _planted_dir(tmp_path)
    feature_file = data_dir / "text_feat.npy"
    np.save(feature_file, np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32))
    out = tmp_path / "cmp"
    common = ["compare", "--dataset", str(data_dir), "--out", str(out), "--seeds", "1", "--device", "cpu",
              "--variant", "a=mf", "--max-epochs", "2"]
    assert main(common) == 0
    rows = json.loads((out / "compare.json").read_text())
    recorded = json.loads((out / "a" / "seed1" / "metrics.json").read_text())["dataset_fingerprint"]
    assert len(recorded) == 64 and rows[0]["dataset_fingerprint"] == recorded
    printed = capsys.readouterr().out
    assert f"Dataset fingerprint (sha256 of ids, splits, features and KG): {recorded}" in printed
    # the code that trained it: this checkout's commit (the tests run from the project's git checkout)
    from trainer.provenance import code_label, code_version

    code = json.loads((out / "a" / "seed1" / "metrics.json").read_text())["code"]
    assert code == code_version() and rows[0]["code"] == code_label(code)
    assert f"Code (git commit of the trainer): {code_label(code)}" in printed
    assert main([*common, "--resume"]) == 0  # same data: reused
    capsys.readouterr()
    features = np.load(feature_file)
    features[0, 0] += 1.0
    np.save(feature_file, features)
    assert main([*common, "--resume"]) == 2
    error = capsys.readouterr().err
    assert "another setting (dataset content: fingerprint" in error and recorded[:12] in error


def test_compare_resume_matches_a_run_by_content_wherever_the_dataset_lies(tmp_path, capsys):
    """The same dataset directory copied elsewhere (another checkout or worktree) has the same fingerprint: its
    finished runs are reused. A run without a recorded fingerprint (before session 13) is matched by path only."""
    import json
    import shutil

    data_dir = _planted_dir(tmp_path)
    out = tmp_path / "cmp"
    tail = ["--out", str(out), "--seeds", "1", "--device", "cpu", "--variant", "a=mf", "--max-epochs", "2"]
    assert main(["compare", "--dataset", str(data_dir), *tail]) == 0
    checkpoint = out / "a" / "seed1" / "checkpoint.pt"
    trained_at = checkpoint.stat().st_mtime_ns
    moved = tmp_path / "elsewhere" / data_dir.name
    shutil.copytree(data_dir, moved)
    assert main(["compare", "--dataset", str(moved), *tail, "--resume"]) == 0
    assert checkpoint.stat().st_mtime_ns == trained_at  # reused, not trained again
    metrics_path = out / "a" / "seed1" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    del metrics["dataset_fingerprint"]
    metrics_path.write_text(json.dumps(metrics))
    capsys.readouterr()
    assert main(["compare", "--dataset", str(moved), *tail, "--resume"]) == 2
    assert "another setting (dataset)" in capsys.readouterr().err
    assert main(["compare", "--dataset", str(data_dir), *tail, "--resume"]) == 0  # its own path: reused
    assert checkpoint.stat().st_mtime_ns == trained_at


def test_every_shipped_preset_is_a_valid_config_for_a_registered_model():
    """A preset with a misspelt field or a wrong type would only fail when someone trains with it."""
    from trainer.config import PRESET_DIR, ConfigError, resolve_run_config
    from trainer.models.registry import MODELS, build_config

    presets = sorted(PRESET_DIR.rglob("*.yaml"))
    assert len(presets) > 20
    for preset in presets:
        dataset = preset.parent.name if preset.parent != PRESET_DIR else None
        accepted = []
        for model in MODELS:
            try:
                run = resolve_run_config(model, dataset, preset)
                build_config(model, run.model_params)
            except (ConfigError, ValueError):
                continue
            accepted.append(model)
        assert accepted, f"{preset.relative_to(PRESET_DIR)} is valid for no registered model"
    run = resolve_run_config("ludp_item", "ml-100k-mm", PRESET_DIR / "ml-100k-mm" / "ludp_item_kg_only.yaml")
    config = build_config("ludp_item", run.model_params)
    assert (config.item_graph_weights, config.item_graph_scale, config.user_graph) == ("mean", 0.2, False)
    assert (config.layer_combination, config.modalities) == ("mean", ["kg"])
    assert (run.train.lr, run.train.weight_decay, run.train.patience) == (0.005, 1e-6, 20)


def test_a_run_from_before_a_model_parameter_existed_compares_with_the_value_it_trained_with():
    from trainer.pipeline import _comparable_config

    def config(model="lightgcn", **params):
        return {"model": model, "model_params": {"embedding_dim": 64, "n_layers": 2, **params}, "train": {}}

    before = _comparable_config(config())  # stored before user_scale was added
    assert before == _comparable_config(config(user_scale=1.0))
    assert before != _comparable_config(config(user_scale=0.5))
    # only the listed parameters are filled: any other missing one (whose default may have changed since) differs
    assert _comparable_config(config(n_layers=2)) != _comparable_config({**config(), "model_params": {"embedding_dim": 64}})
    assert _comparable_config(config("mf"))["model_params"] == {"embedding_dim": 64, "n_layers": 2}
