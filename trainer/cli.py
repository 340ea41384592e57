"""Command line: ``python -m trainer
fit|evaluate|export|features|perturb|compare|table|popularity|tune|demo|explain|retrain|coldstart|models``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

# the metrics of compare's rows that `table --perturbed` can pair (trainer.pipeline.METRIC_NAMES, kept import-light)
TABLE_METRICS = ("test_recall@20", "test_ndcg@20", "valid_recall@20", "valid_ndcg@20")

logger = logging.getLogger("trainer")


def _add_train_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: preset, 999)")
    parser.add_argument("--device", default=None, help="auto (default) | cpu | cuda[:N]")
    parser.add_argument("--max-epochs", type=int, default=None, help="cap on training epochs")
    parser.add_argument("--patience", type=int, default=None, help="early-stopping patience: epochs without a valid gain")
    parser.add_argument("--lr", type=float, default=None, help="learning rate override")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="wall-clock budget for training (the epoch that crosses it is evaluated, then training stops)")


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"seed": args.seed, "device": args.device, "max_epochs": args.max_epochs,
            "patience": args.patience, "lr": args.lr, "max_seconds": args.max_seconds}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser("fit", help="train a model, evaluate (valid-selected, test once) and export a bundle")
    fit.add_argument("--model", required=True, help="registered model name (see `models`)")
    fit.add_argument("--dataset", required=True, type=Path, help="dataset directory (format auto-detected)")
    fit.add_argument("--out", required=True, type=Path, help="run directory to write")
    fit.add_argument("--config", type=Path, default=None, help="YAML with model_params / train / export overrides")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_train_overrides(fit)

    evaluate = sub.add_parser("evaluate", help="recompute metrics from an exported bundle and a split file")
    evaluate.add_argument("--run", type=Path, help="run directory (uses RUN/bundles/current and RUN/split.inter)")
    evaluate.add_argument("--bundle", type=Path, help="bundle directory or bundle root")
    evaluate.add_argument("--split", type=Path, help="MMRec split file (userID itemID x_label)")
    evaluate.add_argument("--on", choices=["valid", "test"], default="test")
    evaluate.add_argument("--popularity", action="store_true", help="rank by training popularity instead (baseline)")

    export = sub.add_parser("export", help="re-export RUN/checkpoint.pt as a new bundle")
    export.add_argument("--run", required=True, type=Path)
    export.add_argument("--dataset", type=Path, default=None, help="dataset directory (default: the one trained on)")
    export.add_argument("--cold-start-neighbours", type=int, default=None,
                        help="k of the feature-neighbour-mean item encoder given to models without their own "
                             "(default: the run's export.cold_start_neighbours)")

    features = sub.add_parser(
        "features",
        help="build a multimodal dataset directory: text + kg from a RecBole dataset (MovieLens), or, with "
             "--item-text, a text modality for a dataset of any format",
    )
    features.add_argument("--dataset", required=True, type=Path,
                          help="raw RecBole dataset (e.g. ml-100k); with --item-text, a dataset of any format")
    features.add_argument("--out", required=True, type=Path)
    features.add_argument("--item-text", type=Path, default=None,
                          help="tab-separated file with columns item_id and text: encode it as the text modality "
                               "(all-MiniLM-L6-v2 unless --text-model); other modalities, the split and the KG are kept")
    features.add_argument("--split-seed", type=int, default=2024)
    features.add_argument("--text-model", type=Path, default=None, help="sentence-transformers model directory")

    perturb = sub.add_parser(
        "perturb",
        help="copy a dataset directory with N feature values moved by one ulp (how far float noise alone moves a "
             "result: compare the same seeds on both), or with the items' feature rows shuffled (a content control)",
    )
    perturb.add_argument("--dataset", required=True, type=Path, help="dataset directory with <modality>_feat.npy")
    perturb.add_argument("--out", required=True, type=Path, help="directory to create (must not exist)")
    change = perturb.add_mutually_exclusive_group(required=True)
    change.add_argument("--values", type=int, help="how many nonzero feature values to move by one ulp")
    change.add_argument("--shuffle-rows", action="store_true",
                        help="give every item the features of another (one permutation for all modalities)")
    perturb.add_argument("--seed", type=int, default=0,
                         help="seed of the choice of values and directions, or of the permutation")

    cmp = sub.add_parser("compare", help="train variants × seeds and print a mean ± std table")
    cmp.add_argument("--dataset", required=True, type=Path)
    cmp.add_argument("--out", required=True, type=Path)
    cmp.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    cmp.add_argument("--variant", action="append", required=True, help="LABEL=MODEL[:CONFIG.yaml]; repeatable")
    cmp.add_argument("--max-epochs", type=int, default=None)
    cmp.add_argument("--patience", type=int, default=None)
    cmp.add_argument("--device", default=None)
    cmp.add_argument("--max-seconds", type=float, default=None, help="training time budget per run")
    cmp.add_argument("--jobs", type=int, default=1, help="runs trained at once, one process each (e.g. on a GPU)")
    cmp.add_argument("--resume", action="store_true",
                     help="reuse runs that already finished under OUT with identical settings (their bundles are evaluated again)")
    cmp.add_argument("--baseline", default=None,
                     help="variant label the others are compared with (95%% intervals over seeds, paired by seed when both "
                          "ran the same seeds, else Welch; default: the first)")

    table = sub.add_parser("table", help="print compare's tables again from its stored rows (compare.json)")
    table.add_argument("--rows", type=Path, required=True, help="compare.json, or a {family: rows} file with --family")
    table.add_argument("--family", default=None, help="which group of rows of a {family: rows} file")
    table.add_argument("--baseline", default=None, help="variant label the others are compared with (default: the first)")
    table.add_argument("--perturbed", type=Path, action="append", default=None,
                       help="rows of the same variants trained on a changed copy of the data (`trainer perturb`): print "
                            "each variant's change from --rows instead, paired by seed; repeatable (several copies, e.g. "
                            "shuffles with different permutation seeds: each seed's change is averaged over them)")
    table.add_argument("--perturbed-family", action="append", default=None,
                       help="which group of rows of a {family: rows} --perturbed file: once for every --perturbed, or "
                            "once per --perturbed, in the same order")
    table.add_argument("--metric", action="append", default=None, choices=TABLE_METRICS,
                       help="with --perturbed; repeatable (default: the two test metrics; valid_ndcg@20 is in rows "
                            "stored since session 21)")

    popularity = sub.add_parser(
        "popularity", help="test Recall@K and top-K exposure by item popularity group for the runs of one compare")
    source = popularity.add_mutually_exclusive_group(required=True)
    source.add_argument("--compare-dir", type=Path,
                        help="compare's --out directory (its compare.json and LABEL/seedN runs)")
    source.add_argument("--stored", type=Path,
                        help="print the report again from per-run figures that --json wrote (a list, or "
                             "{family: list} with --family)")
    popularity.add_argument("--family", default=None, help="which group of rows of a {family: rows} --stored file")
    popularity.add_argument("--groups", type=int, default=None, help="number of item groups (default 5)")
    popularity.add_argument("--by", choices=["interactions", "items"], default=None,
                            help="cut the popularity-ordered items into groups of about equal training interactions "
                                 "(default) or equal item counts")
    popularity.add_argument("--k", type=int, default=None, help="cut-off K (default 20)")
    popularity.add_argument("--baseline", default=None, help="variant label the others are compared with (default: the first)")
    popularity.add_argument("--json", type=Path, default=None, help="also write the per-run figures to this JSON file")

    tune = sub.add_parser("tune", help="grid search on VALID Recall@20 (never reads test); write the best preset")
    tune.add_argument("--model", required=True)
    tune.add_argument("--dataset", required=True, type=Path)
    tune.add_argument("--out", required=True, type=Path)
    tune.add_argument("--grid", action="append", required=True,
                      help="model_params.NAME=v1,v2 or train.NAME=v1,v2; repeatable (cartesian product)")
    tune.add_argument("--seed", type=int, default=999)
    tune.add_argument("--max-epochs", type=int, default=None)
    tune.add_argument("--patience", type=int, default=None)
    tune.add_argument("--device", default=None)
    tune.add_argument("--max-seconds", type=float, default=None, help="training time budget per config")
    tune.add_argument("--jobs", type=int, default=1, help="configs trained at once, one process each (e.g. on a GPU)")
    tune.add_argument("--config", type=Path, default=None, help="YAML preset the grid starts from")
    tune.add_argument("--write-preset", type=Path, default=None, help="YAML preset to write the best config to")

    demo = sub.add_parser("demo", help="obtain MovieLens-100K, build features, train, export (the README's demo)")
    demo.add_argument("--workdir", type=Path, default=Path("runs/demo"))
    demo.add_argument("--model", default="lightgcn")
    demo.add_argument("--max-epochs", type=int, default=None)

    explain = sub.add_parser("explain", help="why a user gets their recommendations (modality weights, neighbours)")
    explain.add_argument("--run", required=True, type=Path)
    explain.add_argument("--user", required=True, help="external user id")
    explain.add_argument("--k", type=int, default=10)
    explain.add_argument("--dataset", type=Path, default=None)

    retrain = sub.add_parser("retrain", help="fold the store's online events into the dataset and train a new bundle")
    retrain.add_argument("--dataset", required=True, type=Path)
    retrain.add_argument("--out", required=True, type=Path, help="run directory whose bundles/ the service watches")
    retrain.add_argument("--model", default="lightgcn")
    retrain.add_argument("--config", type=Path, default=None,
                         help="YAML with model_params / train / export overrides (after the dataset's preset)")
    retrain.add_argument("--redis-url", default=None, help="read events from this Redis (default: $MODALREC_REDIS_URL)")
    retrain.add_argument("--key-prefix", default=None,
                         help="prefix of the service's Redis keys (default: $MODALREC_REDIS_PREFIX, else modalrec:)")
    retrain.add_argument("--max-epochs", type=int, default=None)
    retrain.add_argument("--keep-bundles", type=int, default=5,
                         help="bundles kept under OUT/bundles after publishing, newest first (default 5; 0 = all)")
    retrain.add_argument("--warm-start", action=argparse.BooleanOptionalAction, default=False,
                         help="start from OUT/checkpoint.pt (the previous retrain's model; users and items matched by "
                              "id, new ones start fresh) instead of a fresh initialisation; without a usable one, "
                              "train from scratch and say why (default: off, docs/retrain.md)")

    cold = sub.add_parser(
        "coldstart", help="hold out items, train on the rest, rank the held-out items by their encoded features"
    )
    cold.add_argument("--model", required=True, help="a registered model; one without its own item encoder gets the feature-neighbour mean (lightgcn, mf, kgat)")
    cold.add_argument("--dataset", required=True, type=Path, help="dataset directory with item features")
    cold.add_argument("--out", required=True, type=Path, help="directory for warm_run/ and coldstart.json")
    cold.add_argument("--config", type=Path, default=None, help="YAML with model_params / train overrides")
    cold.add_argument("--cold-fraction", type=float, default=0.2, help="share of items held out (default 0.2)")
    cold.add_argument("--split-seed", type=int, default=0, help="seed of the held-out item draw")
    cold.add_argument("--quiet", action="store_true", help="no progress bar")
    cold.add_argument("--evaluate-only", action="store_true",
                      help="no training: evaluate OUT's existing warm run(s) again and rewrite coldstart.json")
    cold.add_argument("--served-slots", type=int, nargs="+", default=[0, 2],
                      help="reserved new-item places (of 20) the serving evaluation tries (default: 0 2)")
    cold.add_argument("--validation", action="store_true",
                      help="evaluate on a validation split: the split's held-out items are removed and never read, "
                           "and a second share of the rest is held out and evaluated (for choosing encoder settings)")
    cold.add_argument("--neighbour-k", type=int, nargs="+", default=[],
                      help="also evaluate the feature-neighbour-mean encoder with these neighbour counts "
                           "(the export's encoder for models without one of their own uses k = "
                           "trainer.modules.cold_start.DEFAULT_NEIGHBOURS)")
    cold.add_argument("--seeds", type=int, nargs="+", default=None,
                      help="training seeds, one run each under OUT/seedN, then a mean ± std line (replaces --seed)")
    cold.add_argument("--jobs", type=int, default=1,
                      help="with --seeds: runs trained at once, one process each (set OMP_NUM_THREADS=1 on a CPU)")
    _add_train_overrides(cold)

    sub.add_parser("models", help="list registered models")
    return parser


def _cmd_fit(args: argparse.Namespace) -> int:
    from trainer.pipeline import run_fit

    metrics = run_fit(args.model, args.dataset, args.out, args.config, _train_overrides(args), progress=not args.quiet)
    _print_summary(metrics)
    return 0


def _print_summary(metrics: dict[str, Any]) -> None:
    rows = ["| split | " + " | ".join(k for k in metrics["test"] if k != "n_users") + " |"]
    rows.append("|---" * (len(metrics["test"])) + "|")
    for split in ("valid", "test"):
        values = metrics[split]
        rows.append(f"| {split} | " + " | ".join(f"{v:.4f}" for k, v in values.items() if k != "n_users") + " |")
    print(f"model {metrics['model']} on {metrics['dataset']} (seed {metrics['seed']}, {metrics['device']}): "
          f"best valid epoch {metrics['best_epoch']} of {metrics['epochs_run']}, "
          f"{metrics['seconds_per_epoch']:.2f} s/epoch")
    print("\n".join(rows))
    print(f"bundle: {metrics['bundle']}")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from trainer.bundle_eval import evaluate_bundle_on_split

    if args.run is not None:
        bundle, split = args.run / "bundles", args.run / "split.inter"
    else:
        bundle, split = args.bundle, args.split
    if bundle is None or split is None:
        raise ValueError("give --run RUN, or both --bundle and --split")
    result = evaluate_bundle_on_split(Path(bundle), Path(split), label=2 if args.on == "test" else 1,
                                      score_by_popularity=args.popularity)
    print(json.dumps(result, indent=2))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from trainer.pipeline import export_checkpoint

    print(export_checkpoint(args.run, args.dataset, args.cold_start_neighbours))
    return 0


def _cmd_features(args: argparse.Namespace) -> int:
    if args.item_text is not None:
        from trainer.data.text_features import add_text_features

        print(add_text_features(args.dataset, args.item_text, args.out, split_seed=args.split_seed,
                                text_model=args.text_model))
        return 0
    from trainer.data.features import build_features

    out = build_features(args.dataset, args.out, split_seed=args.split_seed, text_model=args.text_model)
    print(out if out is not None else args.out)
    return 0


def _cmd_perturb(args: argparse.Namespace) -> int:
    from trainer.data.perturb import perturb_features, shuffle_feature_rows

    if args.shuffle_rows:
        report = shuffle_feature_rows(args.dataset, args.out, seed=args.seed)
    else:
        report = perturb_features(args.dataset, args.out, args.values, seed=args.seed)
    print(json.dumps(report, indent=2))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from trainer.pipeline import compare

    overrides = {"max_epochs": args.max_epochs, "patience": args.patience, "device": args.device,
                 "max_seconds": args.max_seconds}
    _, table = compare(args.dataset, args.out, args.variant, args.seeds,
                       {k: v for k, v in overrides.items() if v is not None}, jobs=args.jobs, baseline=args.baseline,
                       resume=args.resume)
    (args.out / "compare.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0


def _reject_flags(flags: tuple[tuple[str, object], ...], where: str) -> None:
    """ValueError naming the flags of (flag, value) pairs that were given (value not None), which apply only ``where``."""
    given = [flag for flag, value in flags if value is not None]
    if given:
        raise ValueError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} {where}")


def _cmd_table(args: argparse.Namespace) -> int:
    from trainer.pipeline import compare_report, perturbation_table, read_compare_rows

    rows = read_compare_rows(args.rows, args.family)
    if args.perturbed is None:
        _reject_flags((("--perturbed-family", args.perturbed_family), ("--metric", args.metric)), "only with --perturbed")
        print(compare_report(rows, args.baseline))
        return 0
    if args.baseline is not None:
        raise ValueError("--baseline does not apply with --perturbed: each variant is compared with itself")
    families = args.perturbed_family or [None]
    if len(families) == 1:
        families = families * len(args.perturbed)
    elif len(families) != len(args.perturbed):
        raise ValueError(f"--perturbed-family given {len(families)} times for {len(args.perturbed)} --perturbed files: "
                         "give it once, or once per --perturbed")
    copies = [read_compare_rows(path, family, "--perturbed-family")
              for path, family in zip(args.perturbed, families, strict=True)]
    metrics = list(dict.fromkeys(args.metric or ["test_recall@20", "test_ndcg@20"]))
    tables = [perturbation_table(rows, *copies, metric=metric) for metric in metrics]
    if len(copies) > 1:
        print(f"{len(copies)} perturbed copies: each seed's change is the mean over the copies; the interval is over seeds.\n")
    print("\n\n".join(tables))
    return 0


def _cmd_popularity(args: argparse.Namespace) -> int:
    from trainer.loop import write_json_atomic
    from trainer.popularity_report import popularity_report, popularity_rows, read_popularity_rows

    if args.stored is not None:
        _reject_flags((("--groups", args.groups), ("--by", args.by), ("--k", args.k)),
                      "to --compare-dir: a --stored file keeps the groups it was computed with")
        rows = read_popularity_rows(args.stored, args.family)
    elif args.family is not None:
        raise ValueError("--family applies to a --stored file")
    else:
        k = 20 if args.k is None else args.k
        if k < 1:
            raise ValueError(f"--k must be >= 1, got {k}")
        rows = popularity_rows(args.compare_dir, 5 if args.groups is None else args.groups, k,
                               args.by or "interactions")
    report = popularity_report(rows, args.baseline)
    if args.json is not None:
        write_json_atomic(args.json, rows)
    print(report)
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from trainer.pipeline import parse_grid, tune

    overrides = {"max_epochs": args.max_epochs, "patience": args.patience, "device": args.device,
                 "max_seconds": args.max_seconds}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    rows, best = tune(args.model, args.dataset, args.out, parse_grid(args.grid), args.seed, overrides,
                      args.write_preset, jobs=args.jobs, config_path=args.config)
    print("| params | valid R@20 | valid N@20 | best epoch | s/epoch |")
    print("|---|---|---|---|---|")
    for row in rows:
        marker = " **best**" if row is best else ""
        print(f"| {row['params']}{marker} | {row['valid_recall@20']:.4f} | {row['valid_ndcg@20']:.4f} | "
              f"{row['best_epoch']} | {row['seconds_per_epoch']:.2f} |")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from trainer.demo import run_demo

    run_demo(args.workdir, args.model, args.max_epochs)
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from trainer.explain import explain, format_explanation

    print(format_explanation(explain(args.run, args.user, args.k, dataset_path=args.dataset)))
    return 0


def _cmd_retrain(args: argparse.Namespace) -> int:
    from trainer.retrain import retrain

    print(retrain(args.dataset, args.out, args.model, args.redis_url, args.key_prefix, args.max_epochs,
                  args.keep_bundles, config_path=args.config, warm_start=args.warm_start))
    return 0


def _call(function, *arguments):
    """``function(*arguments)``: a picklable job runner for :func:`trainer.pipeline._in_parallel`."""
    return function(*arguments)


def _cmd_coldstart(args: argparse.Namespace) -> int:
    from trainer.coldstart import reevaluate_cold_start, run_cold_start, summarize
    from trainer.pipeline import _in_parallel, load_dataset_dir

    dataset = load_dataset_dir(args.dataset)

    slots = tuple(args.served_slots)
    if any(n < 0 for n in slots):
        raise ValueError(f"--served-slots must be >= 0, got {list(slots)}")

    neighbour_ks = tuple(args.neighbour_k)
    if any(k < 1 for k in neighbour_ks):
        raise ValueError(f"--neighbour-k must be >= 1, got {list(neighbour_ks)}")
    if args.evaluate_only and args.validation:
        raise ValueError("--validation is read from OUT's coldstart.json with --evaluate-only; leave it out")

    def job(out: Path, overrides: dict[str, Any]) -> tuple[Any, ...]:
        if args.evaluate_only:
            return (reevaluate_cold_start, out, dataset, args.model, slots, neighbour_ks)
        return (run_cold_start, args.model, args.dataset, out, args.cold_fraction, args.split_seed, args.config,
                overrides, dataset, not args.quiet, slots, args.validation, neighbour_ks)

    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    if args.seeds:
        if args.seed is not None:
            raise ValueError("give --seed or --seeds, not both")
        jobs = [job(args.out / f"seed{seed}", {**_train_overrides(args), "seed": seed}) for seed in args.seeds]
        results = _in_parallel(_call, jobs, args.jobs, lambda done: None)
    else:
        results = [_call(*job(args.out, _train_overrides(args)))]
    summary = summarize(results)
    which = "VALIDATION held-out items" if summary["validation"] else "held-out items"
    print(f"{summary['model']}: {summary['n_cold_items']} {which} (split seed {results[0]['split_seed']}), "
          f"training seeds {summary['train_seeds']}, mean ± std")
    rows = [("encoder", "model (bundle's item encoder)"), ("content_profile", "content profile")]
    rows += [(key[: -len("_recall@20")], f"neighbour mean, {key[len('neighbour_mean['):key.index(']')]}")
             for key in summary if key.startswith("neighbour_mean[") and key.endswith("_recall@20")]
    for key, label in rows:
        (r_mean, r_std), (n_mean, n_std) = summary[f"{key}_recall@20"], summary[f"{key}_ndcg@20"]
        print(f"{label:31s} recall@20 {r_mean:.4f} ± {r_std:.4f}  ndcg@20 {n_mean:.4f} ± {n_std:.4f}")
    print(f"{'random (expected)':31s} recall@20 {summary['random_expected']:.4f}")
    for name in (f"new_item_slots={n}" for n in slots):
        prefix = f"served[{name}]_"
        if f"{prefix}recall@20" not in summary:
            continue
        (r, r_sd), (share, share_sd) = summary[f"{prefix}recall@20"], summary[f"{prefix}cold_share@20"]
        (p, p_sd), (p_random, _) = summary[f"{prefix}new_item_precision"], summary[f"{prefix}new_item_precision_random"]
        shown = summary[f"{prefix}n_users_shown_new_items"]
        print(f"served among all items, {name}: recall@20 {r:.4f} ± {r_sd:.4f}, held-out share of the top 20 "
              f"{share:.3f} ± {share_sd:.3f}; users shown a held-out item {shown}, precision of those shown "
              f"{p:.3f} ± {p_sd:.3f} (random held-out items: {p_random:.3f})")
    (v_mean, v_std) = summary["warm_valid_recall@20"]
    print(f"warm valid recall@20 {v_mean:.4f} ± {v_std:.4f}; reports: coldstart.json under {args.out}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from trainer.models.registry import MODELS

    for name, spec in MODELS.items():
        print(f"{name:16s} {spec.description}")
    return 0


COMMANDS = {
    "fit": _cmd_fit, "evaluate": _cmd_evaluate, "export": _cmd_export, "features": _cmd_features,
    "perturb": _cmd_perturb, "compare": _cmd_compare, "table": _cmd_table, "popularity": _cmd_popularity,
    "tune": _cmd_tune, "demo": _cmd_demo,
    "explain": _cmd_explain, "retrain": _cmd_retrain, "coldstart": _cmd_coldstart, "models": _cmd_models,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    from service.bundle import BundleError
    from trainer.config import ConfigError
    from trainer.data.dataset import DatasetError

    try:
        return COMMANDS[args.command](args)
    except (DatasetError, ConfigError, BundleError, FileNotFoundError, ValueError, KeyError, RuntimeError) as exc:
        message = str(exc) if not isinstance(exc, KeyError) else str(exc).strip("'\"")
        print(f"error: {message}", file=sys.stderr)
        return 2
