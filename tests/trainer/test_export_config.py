"""The run config's ``export`` section: the neighbour count of the exported feature-neighbour-mean item encoder."""

import json
from pathlib import Path

import numpy as np
import pytest

from trainer.cli import main
from trainer.config import ConfigError, ExportConfig, resolve_run_config


def _planted_features_dir(tmp_path, n_users=40, n_items=60):
    """A planted dataset with item features (distinct rows) written as an MMRec directory."""
    from trainer.data.features import write_mmrec_dir
    from trainer.data.synthetic import planted_dataset

    data = planted_dataset(n_users=n_users, n_items=n_items, interactions_per_user=8, with_kg=False, seed=0)
    assert data.features, "the planted dataset should carry item features"
    return write_mmrec_dir(data, tmp_path / "planted")


def _encode_existing_items(bundle):
    """The bundle's ONNX encoder (onnxruntime) applied to the first 8 items' own feature rows: (encoded float32
    [8, d], those items' trained embeddings [8, d], the manifest)."""
    import onnxruntime

    from service.bundle import load_bundle
    from trainer.pipeline import load_dataset_dir

    loaded = load_bundle(bundle)
    run_dir = bundle.parent.parent
    dataset = load_dataset_dir(Path(json.loads((run_dir / "metrics.json").read_text())["dataset_path"]))
    session = onnxruntime.InferenceSession(str(bundle / "item_encoder.onnx"), providers=["CPUExecutionProvider"])
    feeds = {name: dataset.features[name][:8].astype(np.float32) for name in loaded.manifest["modalities"]}
    (encoded,) = session.run(["embedding"], feeds)
    return encoded, loaded.item_embeddings[:8], loaded.manifest


def test_export_section_is_read_type_checked_and_range_checked(tmp_path):
    assert resolve_run_config("lightgcn").export == ExportConfig()
    assert ExportConfig().cold_start_neighbours == 30
    config = tmp_path / "c.yaml"
    config.write_text("export: {cold_start_neighbours: 5}\n")
    run = resolve_run_config("lightgcn", None, config)
    assert run.export.cold_start_neighbours == 5
    assert run.to_dict()["export"] == {"cold_start_neighbours": 5, "text_encoder": True}
    config.write_text("export: {cold_start_neighbours: 0}\n")
    with pytest.raises(ConfigError, match="export.cold_start_neighbours must be >= 1, got 0"):
        resolve_run_config("lightgcn", None, config)
    config.write_text("export: {cold_start_neighbours: many}\n")
    with pytest.raises(ConfigError, match="cold_start_neighbours must be an integer, got 'many'"):
        resolve_run_config("lightgcn", None, config)
    config.write_text("export: {neighbours: 5}\n")
    with pytest.raises(ConfigError, match=r"unknown export keys \['neighbours'\]"):
        resolve_run_config("lightgcn", None, config)
    config.write_text("export: 5\n")
    with pytest.raises(ConfigError, match="export must be a mapping"):
        resolve_run_config("lightgcn", None, config)


def test_fit_exports_the_encoder_with_the_configured_neighbour_count_and_export_can_change_it(tmp_path, capsys):
    """With k = 1 an existing item's own features find that item first, so the ONNX encoder returns its trained
    embedding exactly; with k = 30 it returns a mean over 30 items, which is not."""
    data_dir = _planted_features_dir(tmp_path)
    config = tmp_path / "k1.yaml"
    config.write_text("export: {cold_start_neighbours: 1}\n")
    out = tmp_path / "run"
    assert main(["fit", "--model", "mf", "--dataset", str(data_dir), "--out", str(out), "--config", str(config),
                 "--max-epochs", "2", "--device", "cpu", "--quiet"]) == 0
    first = (out / "bundles" / "current").resolve()
    encoded, embeddings, manifest = _encode_existing_items(first)
    assert manifest["item_encoder"]["source"] == "feature_neighbour_mean"
    assert manifest["item_encoder"]["neighbours"] == 1
    np.testing.assert_allclose(encoded, embeddings, rtol=1e-5, atol=1e-6)

    capsys.readouterr()
    assert main(["export", "--run", str(out)]) == 0  # the run's setting is kept
    again = (out / "bundles" / "current").resolve()
    assert again != first and json.loads((again / "manifest.json").read_text())["item_encoder"]["neighbours"] == 1

    assert main(["export", "--run", str(out), "--cold-start-neighbours", "30"]) == 0
    wider = (out / "bundles" / "current").resolve()
    encoded, embeddings, manifest = _encode_existing_items(wider)
    assert manifest["item_encoder"]["neighbours"] == 30
    assert np.abs(encoded - embeddings).max() > 1e-3

    capsys.readouterr()
    assert main(["export", "--run", str(out), "--cold-start-neighbours", "0"]) == 2
    assert "cold_start_neighbours must be >= 1, got 0" in capsys.readouterr().err
    assert (out / "bundles" / "current").resolve() == wider  # nothing published


def test_export_of_a_directory_without_a_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["export", "--run", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt does not exist" in err and "a finished `trainer fit` run directory?" in err


def test_compare_resume_treats_a_changed_export_setting_as_another_run(tmp_path, capsys):
    data_dir = _planted_features_dir(tmp_path)
    out = tmp_path / "cmp"
    common = ["compare", "--dataset", str(data_dir), "--out", str(out), "--seeds", "1", "--device", "cpu",
              "--max-epochs", "2"]
    assert main([*common, "--variant", "a=mf"]) == 0
    # a run written before the export section existed stands for the default setting
    metrics_path = out / "a" / "seed1" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    del metrics["config"]["export"]
    metrics_path.write_text(json.dumps(metrics))
    assert main([*common, "--variant", "a=mf", "--resume"]) == 0
    config = tmp_path / "k5.yaml"
    config.write_text("export: {cold_start_neighbours: 5}\n")
    capsys.readouterr()
    assert main([*common, "--variant", f"a=mf:{config}", "--resume"]) == 2
    assert "another setting (export.cold_start_neighbours)" in capsys.readouterr().err


def test_retrain_reads_a_config_file_and_refuses_a_bad_one_before_reading_the_store(tmp_path, monkeypatch):
    import trainer.pipeline as pipeline
    from trainer.retrain import retrain

    data_dir = _planted_features_dir(tmp_path)
    seen = []

    def fake_fit(run_config, dataset, dataset_path, out_dir, progress=True, derived_dataset=None):
        seen.append(run_config)
        return {"bundle": str(out_dir / "bundles" / "v1"), "valid": {}, "test": {}}

    monkeypatch.setattr(pipeline, "run_fit_config", fake_fit)
    config = tmp_path / "c.yaml"
    config.write_text("train: {lr: 0.02}\nexport: {cold_start_neighbours: 7}\n")
    retrain(data_dir, tmp_path / "run", model="mf", keep_bundles=0, config_path=config)
    assert seen[-1].train.lr == 0.02 and seen[-1].export.cold_start_neighbours == 7
    assert str(config) in seen[-1].sources

    def store_must_not_be_read(*args, **kwargs):
        raise AssertionError("the store was read before the config was checked")

    monkeypatch.setattr("trainer.retrain.read_store_entries", store_must_not_be_read)
    config.write_text("model_params: {bogus: 1}\n")
    with pytest.raises(ValueError, match="unknown parameter.*bogus"):
        retrain(data_dir, tmp_path / "run2", model="mf", redis_url="redis://127.0.0.1:1/0", config_path=config)
    assert not (tmp_path / "run2").exists()


@pytest.mark.parametrize("section", ["model_params: [1, 2]", "model_params: 5", "model_params: lr"])
def test_a_model_params_section_that_is_not_a_mapping_is_a_config_error_exit_2(tmp_path, capsys, section):
    """Like train and export: a clear ConfigError naming the file, not a TypeError traceback (exit 1)."""
    config = tmp_path / "c.yaml"
    config.write_text(section + "\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: model_params must be a mapping"):
        resolve_run_config("mf", None, config)
    code = main(["fit", "--model", "mf", "--dataset", str(tmp_path / "none"), "--out", str(tmp_path / "run"),
                 "--config", str(config)])
    assert code == 2 and "model_params must be a mapping" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_compare_checks_every_variants_config_before_training_any(tmp_path, capsys):
    """A bad config of the second variant is reported before the first variant's runs train (not after them)."""
    data_dir = _planted_features_dir(tmp_path)
    config = tmp_path / "bad.yaml"
    config.write_text("export: {text_encoder: maybe}\n")
    out = tmp_path / "cmp"
    code = main(["compare", "--dataset", str(data_dir), "--out", str(out), "--seeds", "1", "--device", "cpu",
                 "--max-epochs", "1", "--variant", "a=mf", "--variant", f"b=mf:{config}"])
    assert code == 2 and "text_encoder must be true or false, got 'maybe'" in capsys.readouterr().err
    assert not (out / "a").exists()
    config.write_text("model_params: {bogus: 1}\n")
    code = main(["compare", "--dataset", str(data_dir), "--out", str(out), "--seeds", "1", "--device", "cpu",
                 "--max-epochs", "1", "--variant", "a=mf", "--variant", f"b=mf:{config}"])
    assert code == 2 and "bogus" in capsys.readouterr().err
    assert not (out / "a").exists()
