"""Planted-answer synthetic datasets for behavioural tests.

Users and items belong to ``n_clusters`` hidden clusters. A user interacts mostly with items of its
own cluster; every modality's item features are the cluster's centroid plus noise; the knowledge graph
links every item to its cluster's entity (plus noise attributes). A model that learns anything ranks
held-out items of the user's cluster far above chance.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from trainer.data.dataset import InteractionDataset, KnowledgeGraph


def planted_dataset(
    n_users: int = 300,
    n_items: int = 200,
    n_clusters: int = 5,
    interactions_per_user: int = 20,
    in_cluster_fraction: float = 0.9,
    modality_dims: dict[str, int] | None = None,
    feature_noise: float = 0.3,
    with_kg: bool = True,
    seed: int = 0,
) -> InteractionDataset:
    """A clustered dataset with a per-user 80/10/10 split, features per modality and a KG.

    Item ``i`` is in cluster ``i % n_clusters``; user ``u`` in cluster ``u % n_clusters``.
    """
    rng = np.random.default_rng(seed)
    modality_dims = modality_dims or {"text": 32, "image": 48}
    item_cluster = np.arange(n_items) % n_clusters
    items_by_cluster = [np.flatnonzero(item_cluster == c) for c in range(n_clusters)]
    rows: dict[str, list[tuple[int, int]]] = {"train": [], "valid": [], "test": []}
    for user in range(n_users):
        own = items_by_cluster[user % n_clusters]
        n_own = min(int(round(interactions_per_user * in_cluster_fraction)), len(own))
        chosen = set(rng.choice(own, size=n_own, replace=False).tolist())
        while len(chosen) < interactions_per_user:
            chosen.add(int(rng.integers(n_items)))
        ordered = rng.permutation(sorted(chosen))
        n_valid = n_test = max(1, len(ordered) // 10)
        n_train = len(ordered) - n_valid - n_test
        for position, item in enumerate(ordered):
            split = "train" if position < n_train else "valid" if position < n_train + n_valid else "test"
            rows[split].append((user, int(item)))

    def to_csr(pairs: list[tuple[int, int]]) -> sp.csr_matrix:
        array = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        data = np.ones(len(array), dtype=np.float32)
        return sp.csr_matrix((data, (array[:, 0], array[:, 1])), shape=(n_users, n_items))

    features = {}
    for name, dim in sorted(modality_dims.items()):
        centroids = rng.normal(size=(n_clusters, dim))
        noisy = centroids[item_cluster] + feature_noise * rng.normal(size=(n_items, dim))
        features[name] = noisy.astype(np.float32)

    kg = None
    if with_kg:
        n_attributes = 20
        cluster_entity = n_items + np.arange(n_clusters)
        attribute_entity = n_items + n_clusters + np.arange(n_attributes)
        triples = [(i, 0, int(cluster_entity[item_cluster[i]])) for i in range(n_items)]
        triples += [(i, 1, int(attribute_entity[rng.integers(n_attributes)])) for i in range(n_items)]
        triples += [(int(cluster_entity[c]), 2, int(attribute_entity[c % n_attributes])) for c in range(n_clusters)]
        entity_ids = [f"item:{i}" for i in range(n_items)]
        entity_ids += [f"cluster:{c}" for c in range(n_clusters)] + [f"attr:{a}" for a in range(n_attributes)]
        kg = KnowledgeGraph(
            triples=np.asarray(triples, dtype=np.int64),
            entity_ids=entity_ids,
            relation_ids=["in_cluster", "has_attribute", "cluster_attribute"],
            item_entity=np.arange(n_items, dtype=np.int64),
        )
    dataset = InteractionDataset(
        name="planted",
        user_ids=[f"u{u}" for u in range(n_users)],
        item_ids=[f"i{i}" for i in range(n_items)],
        train=to_csr(rows["train"]),
        valid=to_csr(rows["valid"]),
        test=to_csr(rows["test"]),
        features=features,
        kg=kg,
    )
    dataset.validate()
    return dataset
