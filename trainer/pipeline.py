"""End-to-end runs: dataset -> fit -> metrics.json, split.inter, checkpoint, bundle; and multi-seed comparisons."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from trainer.bundle_eval import evaluate_bundle_on_split
from trainer.config import (
    WARM_START_ONLY_FIELDS,
    ExportConfig,
    RunConfig,
    merge_overrides,
    resolve_run_config,
)
from trainer.data.dataset import InteractionDataset
from trainer.export import export_bundle
from trainer.loop import CHECKPOINT, METRICS, SPLIT_FILE, fit, write_json_atomic, write_split
from trainer.provenance import code_label, code_version
from trainer.text_encoder import TEXT_MODALITY, ExportedTextEncoder
from trainer.warm_start import WarmStartReport, WarmStartSource

logger = logging.getLogger(__name__)


def load_dataset_dir(path: Path) -> InteractionDataset:
    from trainer.data import load_dataset

    return load_dataset(path)


def dataset_preset_name(dataset_path: Path) -> str:
    return Path(dataset_path).resolve().name


def run_fit(
    model: str,
    dataset_path: Path,
    out_dir: Path,
    config_path: Path | None = None,
    train_overrides: dict[str, Any] | None = None,
    dataset: InteractionDataset | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train, evaluate (valid-selected, test once) and export; returns the metrics.json payload."""
    from trainer.models.registry import get_spec

    get_spec(model)
    run_config = resolve_run_config(
        model, dataset_preset_name(dataset_path), config_path, train_overrides=train_overrides
    )
    dataset = dataset if dataset is not None else load_dataset_dir(dataset_path)
    return run_fit_config(run_config, dataset, Path(dataset_path), out_dir, progress=progress)


def run_fit_config(
    run_config: RunConfig,
    dataset: InteractionDataset,
    dataset_path: Path,
    out_dir: Path,
    progress: bool = True,
    derived_dataset: dict[str, Any] | None = None,
    warm_start: WarmStartSource | None = None,
    warm_start_report: WarmStartReport | None = None,
) -> dict[str, Any]:
    """Train ``run_config`` on ``dataset``, write metrics.json, split.inter, the checkpoint and a bundle.

    ``warm_start``: a previous model to start from (``fit``). metrics.json's ``warm_start`` records what happened:
    fit's report, else ``warm_start_report`` (a caller's "requested but no source": why), else not requested.

    ``derived_dataset``: set when ``dataset`` is not the dataset at ``dataset_path`` but derived from it (e.g. the
    cold-start evaluation's warm items); it is recorded in metrics.json, and the checkpoint then names no dataset,
    so ``export``/``explain`` ask for one instead of rebuilding the model on the wrong item table.
    """
    from trainer.models.registry import build_config

    build_config(run_config.model, run_config.model_params)  # fail on a bad config before writing anything
    out_dir.mkdir(parents=True, exist_ok=True)
    logger.info("run config: %s", run_config.to_dict())
    started = time.perf_counter()
    # Training checkpoints go to a side file: a run already finished in out_dir stays whole (checkpoint, split,
    # metrics.json, bundles) until this one has finished training.
    partial_checkpoint = out_dir / (CHECKPOINT + ".partial")
    result = fit(
        dataset,
        run_config,
        progress=progress,
        checkpoint_path=partial_checkpoint,
        checkpoint_extra={} if derived_dataset else {"dataset_path": str(Path(dataset_path).resolve())},
        warm_start=warm_start,
    )
    if result.warm_start is not None:
        warm_record = {"requested": True, **result.warm_start.to_dict()}
    elif warm_start_report is not None:
        warm_record = {"requested": True, **warm_start_report.to_dict()}
    else:
        warm_record = {"requested": False, "applied": False, "reason": "not requested: trained from scratch"}
    # From here out_dir has no metrics.json until the new one is written last, so a failure in between leaves a
    # run that reads as unfinished (compare --resume retrains it) rather than a mix of two runs.
    (out_dir / METRICS).unlink(missing_ok=True)
    if partial_checkpoint.exists():
        os.replace(partial_checkpoint, out_dir / CHECKPOINT)
    else:
        (out_dir / CHECKPOINT).unlink(missing_ok=True)
    metrics = {
        "model": run_config.model,
        "dataset": dataset.name,
        "dataset_path": str(Path(dataset_path).resolve()),
        "dataset_summary": dataset.summary(),
        "dataset_fingerprint": dataset.fingerprint(),
        "code": code_version(),
        **({"derived_dataset": derived_dataset} if derived_dataset else {}),
        "seed": run_config.train.seed,
        "device": result.device,
        "warm_start": warm_record,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "seconds_per_epoch": result.seconds_per_epoch,
        "total_seconds": time.perf_counter() - started,
        "valid": result.valid,
        "test": result.test,
        "test_protocol": "full ranking over all items; train and valid items masked; read once at the best valid epoch",
        "config": {**run_config.to_dict(), "model_params": dataclasses.asdict(result.model.config)},
        "history": result.history,
    }
    write_split(out_dir / SPLIT_FILE, dataset)
    bundle = export_bundle(
        result.model,
        dataset,
        out_dir / "bundles",
        run_config.model,
        metrics={"valid": result.valid, "test": result.test, "best_epoch": result.best_epoch},
        cold_start_neighbours=run_config.export.cold_start_neighbours,
        text_encoder=bundle_text_encoder(dataset, dataset_path) if run_config.export.text_encoder else None,
    )
    metrics["bundle"] = str(bundle)
    write_json_atomic(out_dir / METRICS, metrics)
    return metrics


def bundle_text_encoder(dataset: InteractionDataset, dataset_path: Path) -> ExportedTextEncoder | None:
    """The raw-text encoder for bundles of ``dataset`` (trainer/text_encoder.py), or None when the dataset has no
    ``text`` modality, its text model is unknown or not on this machine, or the export fails (logged: the trained
    model is exported without it rather than lost)."""
    from trainer.text_encoder import TextEncoderError, dataset_text_model, exported_text_encoder

    found = dataset_text_model(dataset_path, dataset.modality_dims.get(TEXT_MODALITY))
    if found is None:
        return None
    try:
        return exported_text_encoder(*found)
    except (TextEncoderError, OSError, ImportError) as exc:
        logger.warning("no text encoder in the bundle: exporting %s failed: %s", found[0], exc)
        return None


def export_checkpoint(
    run_dir: Path, dataset_path: Path | None = None, cold_start_neighbours: int | None = None
) -> Path:
    """Re-export ``run_dir/checkpoint.pt`` as a new bundle under ``run_dir/bundles``.

    ``cold_start_neighbours``: k of the feature-neighbour-mean item encoder; None keeps the run's
    ``export.cold_start_neighbours`` (the default for checkpoints written before that setting existed).
    """
    from trainer.models.base import ModelInputs
    from trainer.models.registry import build_model

    if cold_start_neighbours is not None and cold_start_neighbours < 1:
        raise ValueError(f"cold_start_neighbours must be >= 1, got {cold_start_neighbours}")
    checkpoint = run_dir / CHECKPOINT
    if not checkpoint.is_file():
        raise ValueError(f"{checkpoint} does not exist: is {run_dir} a finished `trainer fit` run directory?")
    payload = torch.load(checkpoint, map_location="cpu", weights_only=False)
    saved_export = (payload.get("run_config") or {}).get("export") or {}
    if cold_start_neighbours is None:
        cold_start_neighbours = int(saved_export.get("cold_start_neighbours", ExportConfig.cold_start_neighbours))
    with_text_encoder = bool(saved_export.get("text_encoder", ExportConfig.text_encoder))
    if dataset_path is None and payload.get("dataset_path") is None:
        raise ValueError(
            f"{run_dir / CHECKPOINT} names no dataset (it was trained on a derived dataset, see metrics.json); "
            "pass the dataset it was trained on"
        )
    dataset_path = Path(dataset_path or payload["dataset_path"])
    dataset = load_dataset_dir(dataset_path)
    inputs = ModelInputs.from_dataset(dataset, torch.device("cpu"))
    model = build_model(payload["model"], inputs, payload["model_params"])
    model.load_state_dict(payload["state_dict"])
    metrics_path = run_dir / METRICS
    metrics: dict[str, Any] = {}
    if metrics_path.is_file():
        import json

        saved = json.loads(metrics_path.read_text())
        metrics = {"valid": saved.get("valid"), "test": saved.get("test"), "best_epoch": saved.get("best_epoch")}
    return export_bundle(
        model, dataset, run_dir / "bundles", payload["model"], metrics=metrics,
        cold_start_neighbours=cold_start_neighbours,
        text_encoder=bundle_text_encoder(dataset, dataset_path) if with_text_encoder else None,
    )


def parse_variant(text: str) -> tuple[str, str, Path | None]:
    """``LABEL=MODEL[:CONFIG.yaml]`` -> (label, model, config path)."""
    if "=" not in text:
        raise ValueError(f"variant {text!r} must look like LABEL=MODEL or LABEL=MODEL:CONFIG.yaml")
    label, spec = text.split("=", 1)
    if not label or label in (".", "..") or "/" in label or "\\" in label:
        raise ValueError(f"variant label {label!r} must be a non-empty name without '/' or '\\' (it names the "
                         "variant's run directory)")
    model, _, config = spec.partition(":")
    return label, model, Path(config) if config else None


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def welch_interval(a: list[float], b: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean(a) - mean(b), low, high): Welch's t interval for the difference of two means of independent samples.

    ``compare`` uses it only for variants that did not run the same seeds (:func:`difference_table`): runs with the
    same seed share their negative samples, and variants of one model class their initialisation, so they are not
    independent. Degrees of freedom by Welch-Satterthwaite. With fewer than two values on a side the interval is
    (nan, nan); with no spread on either side it is the difference itself.
    """
    from scipy import stats

    difference = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return difference, float("nan"), float("nan")
    share_a, share_b = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    standard_error = math.sqrt(share_a + share_b)
    if standard_error == 0.0:
        return difference, difference, difference
    dof = (share_a + share_b) ** 2 / (share_a**2 / (len(a) - 1) + share_b**2 / (len(b) - 1))
    half_width = float(stats.t.ppf(0.5 + confidence / 2, dof)) * standard_error
    return difference, difference - half_width, difference + half_width


def paired_interval(a: list[float], b: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean(a - b), low, high): the t interval of the mean of the per-pair differences a[i] - b[i] (n - 1 degrees of
    freedom), for values paired by seed. Valid whatever the correlation within a pair, which the seed induces (the
    same negative samples; for variants of one model class the same initialisation); the pairs of different seeds
    are independent. With fewer than two pairs the interval is (nan, nan); with no spread in the differences it is
    the difference itself."""
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    differences = [x - y for x, y in zip(a, b, strict=True)]
    difference = statistics.fmean(differences)
    if len(differences) < 2:
        return difference, float("nan"), float("nan")
    standard_error = statistics.stdev(differences) / math.sqrt(len(differences))
    if standard_error == 0.0:
        return difference, difference, difference
    half_width = float(stats.t.ppf(0.5 + confidence / 2, len(differences) - 1)) * standard_error
    return difference, difference - half_width, difference + half_width


def _configure_worker_logging(level: int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(process)d %(levelname)s %(name)s %(message)s")


def _in_parallel(function, jobs: list[tuple], workers: int, on_result) -> list[Any]:
    """``function(*job)`` for every job, in ``workers`` spawned processes when > 1 (CUDA needs spawn; the
    job's arguments, the dataset included, are pickled to the worker).

    ``on_result(done_results)`` is called with the results finished so far, in job order, after each one.
    """
    results: list[Any] = [None] * len(jobs)
    if workers <= 1 or len(jobs) <= 1:
        for position, job in enumerate(jobs):
            results[position] = function(*job)
            on_result([r for r in results if r is not None])
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_configure_worker_logging, initargs=(logging.getLogger().level,)) as pool:
        futures = {pool.submit(function, *job): position for position, job in enumerate(jobs)}
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            on_result([r for r in results if r is not None])
    return results


# {model: {parameter: the value that reproduces the runs stored before the parameter existed}}, for --resume.
PARAMETERS_ADDED_SINCE: dict[str, dict[str, Any]] = {"lightgcn": {"user_scale": 1.0}}


def _comparable_config(config: dict[str, Any]) -> dict[str, Any]:
    """What must agree for a finished run to stand in for a new one: model, model, training and export parameters
    (not the config files' paths), as JSON would store them. Runs from before the export section had its
    defaults; runs from before a model parameter in ``PARAMETERS_ADDED_SINCE`` was added get the value that
    reproduces how they trained (only those: a default may change after a parameter is added, so missing
    parameters are not filled in general). The training settings of warm-started runs only
    (``WARM_START_ONLY_FIELDS``) are left out: the runs compared here train from scratch, so they did not act (and
    runs from before they existed lack them)."""
    comparable = {key: config[key] for key in ("model", "model_params", "train")}
    added = PARAMETERS_ADDED_SINCE.get(config["model"], {})
    comparable["model_params"] = {**added, **config["model_params"]}
    comparable["train"] = {k: v for k, v in comparable["train"].items() if k not in WARM_START_ONLY_FIELDS}
    comparable["export"] = {**dataclasses.asdict(ExportConfig()), **(config.get("export") or {})}
    return json.loads(json.dumps(comparable))


def finished_run(run_dir: Path, run_config: RunConfig, dataset_path: Path,
                 fingerprint: str | None = None) -> dict[str, Any] | None:
    """The metrics.json payload of a run that finished in ``run_dir`` with the same config on the same dataset;
    None when nothing finished there (no metrics.json: never started, or stopped before exporting).

    The same dataset: when both are known, the same content (``fingerprint``, the dataset's
    :meth:`~trainer.data.dataset.InteractionDataset.fingerprint`, against the one the run recorded), wherever the
    directory lies (another checkout or worktree of the same data is the same dataset; a directory rebuilt with other
    features since the run trained is another one). A run from before runs recorded their fingerprint (session 13)
    is matched by its dataset path, with a warning.

    Raises:
        ValueError: ``run_dir`` holds a finished run of another config or dataset (it is left as it is).
    """
    from trainer.models.registry import build_config

    path = run_dir / METRICS
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text(encoding="utf-8"))
    wanted = _comparable_config(
        {**run_config.to_dict(), "model_params": dataclasses.asdict(build_config(run_config.model, run_config.model_params))}
    )
    found = _comparable_config(metrics["config"])
    recorded = metrics.get("dataset_fingerprint")
    if fingerprint is not None and recorded is not None:
        same_dataset, same_content = True, recorded == fingerprint
    else:
        same_dataset, same_content = metrics["dataset_path"] == str(Path(dataset_path).resolve()), True
    if fingerprint is not None and recorded is None:
        logger.warning("%s records no dataset fingerprint (trained before session 13): reused on the strength of "
                       "its dataset path alone", run_dir)
    if found != wanted or not same_dataset or not same_content:
        differences = sorted(
            f"{section}.{key}"
            for section in ("model_params", "train", "export")
            for key in set(wanted[section]) | set(found[section])
            if wanted[section].get(key) != found[section].get(key)
        )
        if found["model"] != wanted["model"]:
            differences.insert(0, "model")
        if not same_dataset:
            differences.insert(0, "dataset")
        elif not same_content:
            differences.insert(0, f"dataset content: fingerprint {recorded[:12]}… then, {fingerprint[:12]}… now")
        raise ValueError(
            f"{run_dir} holds a finished run with another setting ({', '.join(differences)}); "
            "resume only reuses identical runs: use another --out"
        )
    return metrics


def _seed_run_config(model: str, dataset_path: Path, config_path: Path | None, overrides: dict[str, Any],
                     seed: int) -> RunConfig:
    """The config ``run_fit`` resolves for one variant × seed of a comparison."""
    return resolve_run_config(model, dataset_preset_name(dataset_path), config_path,
                              train_overrides={**overrides, "seed": seed})


def _compare_one(dataset: InteractionDataset, dataset_path: Path, label: str, model: str, config_path: Path | None,
                 seed: int, overrides: dict[str, Any], run_dir: Path, progress: bool,
                 finished: dict[str, Any] | None = None) -> dict[str, Any]:
    """One variant × seed of :func:`compare`: trained, or ``finished`` (a run to reuse, see :func:`finished_run`)."""
    if finished is not None:
        logger.info("compare %s seed %d: reusing the finished run in %s", label, seed, run_dir)
        metrics = finished
    else:
        metrics = run_fit(model, dataset_path, run_dir, config_path, {**overrides, "seed": seed}, dataset=dataset,
                          progress=progress)
    # the bundle by name under this run directory (metrics.json stores the path as given when it was written)
    bundle = run_dir / "bundles" / Path(metrics["bundle"]).name
    recomputed = evaluate_bundle_on_split(bundle, run_dir / SPLIT_FILE, label=2)
    row = {
        "label": label,
        "model": model,
        "seed": seed,
        "valid_recall@20": metrics["valid"]["recall@20"],
        "valid_ndcg@20": metrics["valid"]["ndcg@20"],
        "test_recall@20": recomputed["recall@20"],
        "test_ndcg@20": recomputed["ndcg@20"],
        "trainer_test_recall@20": metrics["test"]["recall@20"],
        "best_epoch": metrics["best_epoch"],
        "seconds_per_epoch": metrics["seconds_per_epoch"],
        "device": metrics["device"],
        "dataset_fingerprint": metrics.get("dataset_fingerprint"),
        "code": code_label(metrics.get("code")),
    }
    logger.info("compare %s seed %d: %s", label, seed, row)
    return row


def compare(
    dataset_path: Path,
    out_dir: Path,
    variants: list[str],
    seeds: list[int],
    train_overrides: dict[str, Any] | None = None,
    progress: bool = False,
    jobs: int = 1,
    baseline: str | None = None,
    resume: bool = False,
) -> tuple[list[dict[str, Any]], str]:
    """Train every variant × seed; recompute test metrics from each bundle; return rows and markdown: the
    mean ± std table and, with two or more variants, the differences to ``baseline`` (default: the first
    variant) with 95% intervals over seeds, paired by seed (:func:`difference_table`).

    ``jobs`` > 1 trains that many runs at once in separate processes (useful on a GPU, where one small
    run leaves the device mostly idle); every run is still one process with its own seed.

    ``resume``: a variant × seed whose run directory already holds a finished run with the same model, model
    parameters, training settings and dataset is not trained again; its bundle is evaluated again. A finished run
    with other settings is an error (:func:`finished_run`), checked for every run before any training starts, as
    is every variant's config.
    """
    parsed = [parse_variant(variant) for variant in variants]
    labels = [label for label, _, _ in parsed]
    if len(set(labels)) != len(labels):
        raise ValueError(f"variant labels must be distinct, got {labels}")
    if baseline is not None and baseline not in labels:
        raise ValueError(f"baseline {baseline!r} is not one of the variant labels {labels}")
    if len(set(seeds)) != len(seeds):
        # a repeated seed would train twice into one run directory and count as two samples in mean ± std
        raise ValueError(f"seeds must be distinct, got {seeds}")
    from trainer.models.registry import build_config

    overrides = dict(train_overrides or {})
    runs = [(label, model, config_path, seed, out_dir / label / f"seed{seed}")
            for label, model, config_path in parsed for seed in seeds]
    # every variant's config is resolved and checked before anything trains: a bad one in the last variant must not
    # surface only after the first variants' runs have trained
    run_configs = [_seed_run_config(model, dataset_path, config_path, overrides, seed)
                   for _, model, config_path, seed, _ in runs]
    for run_config in run_configs:
        build_config(run_config.model, run_config.model_params)
    dataset = load_dataset_dir(dataset_path)
    # every finished run to reuse is looked up (and a mismatching one refused) before anything trains
    fingerprint = dataset.fingerprint()
    finished = [
        finished_run(run_dir, run_config, dataset_path, fingerprint) if resume else None
        for (_, _, _, _, run_dir), run_config in zip(runs, run_configs, strict=True)
    ]
    work = [
        (dataset, dataset_path, label, model, config_path, seed, overrides, run_dir, progress and jobs <= 1, reuse)
        for (label, model, config_path, seed, run_dir), reuse in zip(runs, finished, strict=True)
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = _in_parallel(_compare_one, work, jobs, lambda done: write_json_atomic(out_dir / "compare.json", done))
    return rows, compare_report(rows, baseline)


def compare_report(rows: list[dict[str, Any]], baseline: str | None = None) -> str:
    """``compare``'s markdown from its rows (``compare.json``): the mean ± std table, the differences to ``baseline``
    with two or more variants, and the dataset fingerprint and code lines."""
    table = markdown_table(rows)
    if len({row["label"] for row in rows}) > 1:
        table += "\n\n" + difference_table(rows, baseline)
    return table + "\n\n" + fingerprint_line(rows) + "\n\n" + code_line(rows)


def read_stored_rows(path: Path, family: str | None, required: set[str], kind: str,
                     family_flag: str = "--family") -> list[dict[str, Any]]:
    """Rows stored as JSON: a list of rows, or one family's rows of a ``{family: rows}`` file (chosen with the CLI's
    ``family_flag``), each row holding the ``required`` keys. Raises ValueError naming the file (and ``kind``, e.g.
    "compare rows") otherwise."""
    try:
        stored = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {kind} from {path}: {exc}") from exc
    if isinstance(stored, dict):
        if family is None or family not in stored:
            raise ValueError(f"{path} holds several groups of rows {sorted(stored)}: name one with {family_flag}")
        stored = stored[family]
    elif family is not None:
        raise ValueError(f"{path} holds one list of rows: {family_flag} {family!r} does not apply")
    if not isinstance(stored, list) or not stored or not all(isinstance(r, dict) and required <= set(r) for r in stored):
        raise ValueError(f"{path}: expected a non-empty list of {kind} with {sorted(required)}")
    return stored


def read_compare_rows(path: Path, family: str | None = None, family_flag: str = "--family") -> list[dict[str, Any]]:
    """Rows stored by ``compare`` (``compare.json``: a list of rows), or one family's rows of a ``{family: rows}``
    file (``family_flag``). Raises ValueError naming the file when it holds neither."""
    return read_stored_rows(path, family, {"label", "seed", "valid_recall@20", "test_recall@20"}, "compare rows",
                            family_flag)


METRIC_NAMES = {"test_recall@20": "test R@20", "test_ndcg@20": "test N@20", "valid_recall@20": "valid R@20",
                "valid_ndcg@20": "valid N@20"}


def perturbation_table(base_rows: list[dict[str, Any]], *perturbed_sets: list[dict[str, Any]],
                       confidence: float = 0.95, metric: str = "test_recall@20") -> str:
    """Markdown table of how far a change of the data alone (e.g. a `trainer perturb` copy) moves each variant: the
    same label and seed trained on the base data and on each perturbed copy, ``metric`` (a key of
    :data:`METRIC_NAMES`; default test R@20) paired by seed.

    With one copy, a seed's change is its perturbed minus its base value. With several copies (e.g. shuffles with
    different permutation seeds, all of the same training seeds), a seed's change is the mean over the copies of that
    difference; the seed stays the unit of the interval, since the copies of one seed share its base run. Columns: the
    base mean, the perturbed mean (over seeds and copies), the mean absolute change of one run (over every seed and
    copy), the mean change with its paired t interval over seeds, the base runs' seed std (for scale) and how many runs
    stopped at another epoch than their base run. A label is shown for the seeds it ran on the base data and on every
    copy; other labels and seeds are left out."""
    if metric not in METRIC_NAMES:
        raise ValueError(f"metric must be one of {sorted(METRIC_NAMES)}, got {metric!r}")
    if not perturbed_sets:
        raise ValueError("perturbation_table needs at least one set of perturbed rows")
    metric_name = METRIC_NAMES[metric]

    def by_key(rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
        return {(row["label"], int(row["seed"])): row for row in rows}

    base = by_key(base_rows)
    copies = [by_key(rows) for rows in perturbed_sets]
    shared = set(base).intersection(*copies)
    paired = [row for key in shared for row in (base[key], *(copy[key] for copy in copies))]
    if any(metric not in row for row in paired):
        raise ValueError(f"some rows have no {metric} (rows stored before it was recorded): choose another metric")
    labels = [label for label in dict.fromkeys(row["label"] for row in base_rows) if any(key[0] == label for key in shared)]
    lines = [
        f"| variant | seeds | {metric_name} | {metric_name}, perturbed | mean abs. change | mean change (95% CI, paired) "
        "| seed std | other best epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label in labels:
        seeds = sorted(seed for (name, seed) in shared if name == label)
        before = [float(base[(label, seed)][metric]) for seed in seeds]
        runs = [[float(copy[(label, seed)][metric]) for copy in copies] for seed in seeds]  # [seed][copy]
        run_changes = [[value - b for value in values] for b, values in zip(before, runs, strict=True)]
        # each seed's mean change against zero: a run equal to its base contributes exactly 0 (no rounding of means)
        seed_changes = [statistics.fmean(changes) for changes in run_changes]
        mean_change, low, high = paired_interval(seed_changes, [0.0] * len(seeds), confidence)
        if len(seeds) > 1 and low != high:
            interval = f"{mean_change:+.4f} [{low:+.4f}, {high:+.4f}]"
        else:
            interval = f"{mean_change:+.4f}"
        moved_epochs = sum(base[(label, s)]["best_epoch"] != copy[(label, s)]["best_epoch"] for s in seeds for copy in copies)
        lines.append(
            f"| {label} | {','.join(map(str, seeds))} | {statistics.fmean(before):.4f} "
            f"| {statistics.fmean(value for values in runs for value in values):.4f} "
            f"| {statistics.fmean(abs(c) for changes in run_changes for c in changes):.4f} | {interval} "
            f"| {mean_std(before)[1]:.4f} "
            f"| {moved_epochs} of {len(seeds) * len(copies)} |"
        )
    return "\n".join(lines)


def _provenance_line(rows: list[dict[str, Any]], key: str, missing: str, one: str, several: str) -> str:
    """``one: <value>`` when every row has the same ``row[key]`` (``missing`` where absent), else ``several: `` and
    each value with the label/seed of its runs."""
    seen: dict[str, list[str]] = {}
    for row in rows:
        seen.setdefault(row.get(key) or missing, []).append(f"{row['label']}/{row['seed']}")
    if len(seen) == 1:
        return f"{one}: {next(iter(seen))}"
    return f"{several}: " + "; ".join(f"{value}: {', '.join(runs)}" for value, runs in seen.items())


def fingerprint_line(rows: list[dict[str, Any]]) -> str:
    """Which data the rows were trained on: one dataset fingerprint, or each with the runs that recorded it."""
    return _provenance_line(rows, "dataset_fingerprint", "not recorded (a run from before session 13)",
                            "Dataset fingerprint (sha256 of ids, splits, features and KG)",
                            "Dataset fingerprints differ between runs")


def code_line(rows: list[dict[str, Any]]) -> str:
    """Which code trained the rows: one commit (``+modified`` with uncommitted changes), or each with its runs."""
    return _provenance_line(rows, "code", "unknown", "Code (git commit of the trainer)", "Code differs between runs")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    labels = list(dict.fromkeys(row["label"] for row in rows))
    lines = [
        "| variant | model | seeds | valid R@20 | test R@20 | test N@20 | best epoch | s/epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label in labels:
        group = [row for row in rows if row["label"] == label]

        def cell(key: str, digits: int = 4, group: list[dict[str, Any]] = group) -> str:
            mean, std = mean_std([float(row[key]) for row in group])
            return f"{mean:.{digits}f} ± {std:.{digits}f}"

        lines.append(
            f"| {label} | {group[0]['model']} | {','.join(str(r['seed']) for r in group)} | "
            f"{cell('valid_recall@20')} | {cell('test_recall@20')} | {cell('test_ndcg@20')} | "
            f"{cell('best_epoch', 0)} | {cell('seconds_per_epoch', 2)} |"
        )
    return "\n".join(lines)


def difference_interval(rows: list[dict[str, Any]], label: str, baseline: str, key: str,
                        confidence: float = 0.95) -> tuple[float, float, float, str]:
    """(mean(label) - mean(baseline), low, high, method) of ``row[key]``: paired by seed (:func:`paired_interval`)
    when both variants ran the same two or more seeds, else Welch's interval (:func:`welch_interval`)."""
    def by_seed(name: str) -> dict[int, float]:
        return {int(row["seed"]): float(row[key]) for row in rows if row["label"] == name}

    ours, theirs = by_seed(label), by_seed(baseline)
    if set(ours) == set(theirs) and len(ours) > 1:
        seeds = sorted(ours)
        return (*paired_interval([ours[s] for s in seeds], [theirs[s] for s in seeds], confidence), "paired")
    return (*welch_interval(list(ours.values()), list(theirs.values()), confidence), "Welch")


def difference_table(rows: list[dict[str, Any]], baseline: str | None = None, confidence: float = 0.95) -> str:
    """Markdown table of every variant's mean valid and test R@20 minus the ``baseline`` variant's (default:
    the first), each with its interval over seeds (:func:`difference_interval`: paired by seed when both ran the
    same seeds, Welch otherwise; the "interval" column says which). "test R@20 CI excludes 0" says whether that
    difference is separable from seed noise at that level; no correction for comparing several variants is applied.
    Then test N@20 and valid N@20, each where every row has it (rows of ``compare`` do; valid N@20 since session
    21), as differences in the same way."""
    labels = list(dict.fromkeys(row["label"] for row in rows))
    baseline = labels[0] if baseline is None else baseline
    if baseline not in labels:
        raise ValueError(f"baseline {baseline!r} is not one of the variants {labels}")

    def cell(label: str, key: str) -> tuple[str, float, float, str]:
        difference, low, high, method = difference_interval(rows, label, baseline, key, confidence)
        return f"{difference:+.4f} [{low:+.4f}, {high:+.4f}]", low, high, method

    percent = f"{100 * confidence:g}%"
    extra = [key for key in ("test_ndcg@20", "valid_ndcg@20") if all(key in row for row in rows)]
    lines = [
        f"| variant | valid R@20 − {baseline} ({percent} CI) | test R@20 − {baseline} ({percent} CI) | "
        "test R@20 CI excludes 0 | interval |" + "".join(f" {METRIC_NAMES[key]} − {baseline} ({percent} CI) |" for key in extra),
        "|---|---|---|---|---|" + "---|" * len(extra),
    ]
    for label in labels:
        if label == baseline:
            continue
        valid, _, _, _ = cell(label, "valid_recall@20")
        test, low, high, method = cell(label, "test_recall@20")
        if math.isnan(low):
            verdict, method = "n/a (one seed)", "–"
        else:
            verdict = "higher" if low > 0 else "lower" if high < 0 else "no"
        ndcg = "".join(f" {cell(label, key)[0]} |" for key in extra)
        lines.append(f"| {label} | {valid} | {test} | {verdict} | {method} |{ndcg}")
    return "\n".join(lines)


def _grid_value(text: str) -> Any:
    """A YAML-typed grid value; ``1e-5`` is a number here (YAML 1.1 would read it as a string)."""
    import yaml

    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["model_params.n_layers=1,2,3", "train.lr=0.001,0.005"]`` -> {key: [values]} (YAML-typed values)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        section = key.split(".", 1)[0]
        if not sep or section not in ("model_params", "train") or "." not in key:
            raise ValueError(f"grid entry {item!r} must look like model_params.NAME=v1,v2 or train.NAME=v1,v2")
        grid[key] = [_grid_value(v) for v in values.split(",")]
    return grid


def _tune_one(dataset: InteractionDataset, run: RunConfig, params: dict[str, Any]) -> dict[str, Any]:
    from trainer.loop import fit

    result = fit(dataset, run, progress=False, evaluate_test=False)
    row = {"params": params, "valid_recall@20": result.valid["recall@20"],
           "valid_ndcg@20": result.valid["ndcg@20"], "best_epoch": result.best_epoch,
           "seconds_per_epoch": result.seconds_per_epoch, "device": result.device,
           "model_params": dataclasses.asdict(result.model.config), "train": dataclasses.asdict(run.train)}
    logger.info("tune %s %s -> valid recall@20 %.4f (epoch %d)", run.model, params, row["valid_recall@20"],
                row["best_epoch"])
    return row


def tune(
    model: str,
    dataset_path: Path,
    out_dir: Path,
    grid: dict[str, list[Any]],
    seed: int = 999,
    train_overrides: dict[str, Any] | None = None,
    write_preset: Path | None = None,
    jobs: int = 1,
    config_path: Path | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Grid search on VALID Recall@20 only (the test split is never read); optionally write the best preset.

    ``jobs`` > 1 trains that many configurations at once in separate processes.
    """
    import itertools

    import yaml

    from trainer.models.registry import build_config

    base = resolve_run_config(model, dataset_preset_name(dataset_path), config_path,
                              train_overrides={**(train_overrides or {}), "seed": seed})
    keys = list(grid)
    configs = []
    for values in itertools.product(*(grid[k] for k in keys)):
        params = dict(zip(keys, values))
        run = RunConfig(model=model, model_params=dict(base.model_params),
                        train=dataclasses.replace(base.train), sources=list(base.sources))
        payload: dict[str, dict[str, Any]] = {"model_params": {}, "train": {}}
        for key, value in params.items():
            section, name = key.split(".", 1)
            payload[section][name] = value
        # the checks a config file gets (unknown keys, value types), for every config before any training
        merge_overrides(run, payload, f"grid {params}")
        build_config(model, run.model_params)
        configs.append((run, params))
    dataset = load_dataset_dir(dataset_path)
    runs = [(dataset, run, params) for run, params in configs]
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = _in_parallel(_tune_one, runs, jobs, lambda done: write_json_atomic(out_dir / "tune.json", done))
    best = max(rows, key=lambda r: r["valid_recall@20"])
    if write_preset is not None:
        train = {k: v for k, v in best["train"].items() if k not in ("seed", "device", "max_seconds")}
        preset = {"model_params": best["model_params"], "train": train}
        write_preset.parent.mkdir(parents=True, exist_ok=True)
        header = (f"# chosen on VALID recall@20 by `python -m trainer tune` over {len(rows)} configs "
                  f"(seed {seed}); valid recall@20 {best['valid_recall@20']:.4f}\n")
        write_preset.write_text(header + yaml.safe_dump(preset, sort_keys=True), encoding="utf-8")
    return rows, best
