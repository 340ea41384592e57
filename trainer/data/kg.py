"""Knowledge-graph readers into :class:`KnowledgeGraph`: RecBole ``.kg`` + ``.link``, KGAT ``kg_final.txt``.

Entity order: the entities linked to items, in item order, then every other head/tail entity sorted by
external id. Relations are sorted by external id. Exact duplicate triples are dropped (counted in the stats).

``.link`` policy (RecBole format):
- a row for an item of the dataset links it (an item linked twice to different entities is an error);
- several items may be linked to the same entity (e.g. a film listed twice): they share its index in
  ``item_entity``; the KG models' collaborative KG gives each its own node (``trainer.kg``);
- a row for an item that is listed in the raw files (e.g. ``.item``) but has no interactions is skipped and
  counted as a dangling link;
- a row for an item id that appears nowhere else is a :class:`DatasetError` naming the file and line
  (``unknown_link_items="skip"`` turns it into a counted, logged skip instead);
- a link to an entity that is in no triple is kept (the item gets an entity without facts) and counted
  as a dangling link.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from trainer.data.dataset import DatasetError, KnowledgeGraph
from trainer.data.parsing import column_index, iter_lines, parse_int, read_header_table, require_file

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KGStats:
    """Counts reported when a knowledge graph is loaded."""

    n_entities: int
    n_relations: int
    n_triples: int
    n_duplicate_triples: int
    n_linked_items: int
    n_unlinked_items: int
    n_links_to_entities_without_triples: int
    n_links_for_items_without_interactions: int

    @property
    def n_dangling_links(self) -> int:
        return self.n_links_to_entities_without_triples + self.n_links_for_items_without_interactions

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "n_dangling_links": self.n_dangling_links}


def _field_names(header: list[str]) -> list[str]:
    """RecBole typed header ``name:type`` -> ``name``."""
    return [column.split(":", 1)[0] for column in header]


def build_knowledge_graph(
    triples: list[tuple[str, str, str]],
    item_links: Mapping[int, str],
    n_items: int,
    n_links_for_items_without_interactions: int = 0,
) -> tuple[KnowledgeGraph, KGStats]:
    """Index external triples and item links into a :class:`KnowledgeGraph`.

    Args:
        triples: (head, relation, tail) external ids.
        item_links: internal item index -> external entity id.
        n_items: number of items of the dataset.
        n_links_for_items_without_interactions: links skipped by the reader (for the stats only).
    """
    entity_ids: list[str] = []
    entity_index: dict[str, int] = {}
    for item in sorted(item_links):
        entity = item_links[item]
        if entity not in entity_index:
            entity_index[entity] = len(entity_ids)
            entity_ids.append(entity)
    triple_entities = {h for h, _, _ in triples} | {t for _, _, t in triples}
    for entity in sorted(triple_entities - entity_index.keys()):
        entity_index[entity] = len(entity_ids)
        entity_ids.append(entity)
    relation_ids = sorted({r for _, r, _ in triples})
    relation_index = {r: i for i, r in enumerate(relation_ids)}

    indexed = np.array(
        [(entity_index[h], relation_index[r], entity_index[t]) for h, r, t in triples], dtype=np.int64
    ).reshape(-1, 3)
    unique_triples = np.unique(indexed, axis=0) if len(indexed) else indexed
    item_entity = np.full(n_items, -1, dtype=np.int64)
    for item, entity in item_links.items():
        item_entity[item] = entity_index[entity]

    stats = KGStats(
        n_entities=len(entity_ids),
        n_relations=len(relation_ids),
        n_triples=int(len(unique_triples)),
        n_duplicate_triples=int(len(indexed) - len(unique_triples)),
        n_linked_items=len(item_links),
        n_unlinked_items=n_items - len(item_links),
        n_links_to_entities_without_triples=sum(e not in triple_entities for e in item_links.values()),
        n_links_for_items_without_interactions=n_links_for_items_without_interactions,
    )
    kg = KnowledgeGraph(
        triples=unique_triples, entity_ids=entity_ids, relation_ids=relation_ids, item_entity=item_entity
    )
    return kg, stats


def read_recbole_triples(kg_path: Path) -> list[tuple[str, str, str]]:
    """RecBole ``.kg``: header ``head_id:token relation_id:token tail_id:token``; one triple per line."""
    require_file(kg_path, "RecBole knowledge-graph triples")
    header, rows = read_header_table(kg_path)
    names = _field_names(header)
    head_col, relation_col, tail_col = (
        column_index(kg_path, names, n) for n in ("head_id", "relation_id", "tail_id")
    )
    triples = []
    for row in rows:
        fields = row.fields
        values = (fields[head_col].strip(), fields[relation_col].strip(), fields[tail_col].strip())
        if not (values[0] and values[1] and values[2]):
            raise DatasetError(
                f"{kg_path}:{row.line_no}: expected non-empty head, relation and tail, got {values}"
            )
        triples.append(values)
    return triples


def read_recbole_kg(
    kg_path: Path,
    link_path: Path,
    item_index: Mapping[str, int],
    items_without_interactions: Collection[str] = (),
    unknown_link_items: Literal["error", "skip"] = "error",
) -> tuple[KnowledgeGraph, KGStats]:
    """Read a RecBole ``.kg`` + ``.link`` pair (see the module docstring for the ``.link`` policy).

    Args:
        item_index: external item id -> internal index, for the items of the dataset.
        items_without_interactions: external item ids known from other raw files (e.g. ``.item``) but
            dropped for having no interaction; their links are skipped and counted.
    """
    triples = read_recbole_triples(kg_path)
    require_file(link_path, "RecBole item -> entity links")
    header, rows = read_header_table(link_path)
    names = _field_names(header)
    item_col, entity_col = (column_index(link_path, names, name) for name in ("item_id", "entity_id"))
    item_links: dict[int, str] = {}
    link_line: dict[int, int] = {}
    skipped_known, skipped_unknown = 0, 0
    dropped = set(items_without_interactions)
    for row in rows:
        item_id, entity = row.fields[item_col].strip(), row.fields[entity_col].strip()
        if not item_id or not entity:
            raise DatasetError(f"{link_path}:{row.line_no}: expected non-empty item_id and entity_id")
        item = item_index.get(item_id)
        if item is None:
            if item_id in dropped:
                skipped_known += 1
                continue
            if unknown_link_items == "skip":
                skipped_unknown += 1
                continue
            raise DatasetError(
                f"{link_path}:{row.line_no}: item id {item_id!r} appears in no interaction file "
                f"(expected a link for an item of the dataset)"
            )
        previous = item_links.get(item)
        if previous is not None and previous != entity:
            raise DatasetError(
                f"{link_path}:{row.line_no}: item {item_id!r} is linked to {entity!r} but line "
                f"{link_line[item]} already links it to {previous!r} (expected one entity per item)"
            )
        item_links[item] = entity
        link_line.setdefault(item, row.line_no)
    if skipped_known or skipped_unknown:
        logger.warning(
            "%s: skipped %d links of items without interactions and %d links of unknown items",
            link_path,
            skipped_known,
            skipped_unknown,
        )
    kg, stats = build_knowledge_graph(triples, item_links, len(item_index), skipped_known + skipped_unknown)
    logger.info("knowledge graph %s: %s", kg_path.name, stats.as_dict())
    return kg, stats


def read_kgat_kg(kg_path: Path, n_items: int) -> tuple[KnowledgeGraph, KGStats]:
    """KGAT ``kg_final.txt``: whitespace-separated ``head relation tail`` ints; item ``i`` is entity ``i``."""
    require_file(kg_path, "KGAT knowledge graph")
    raw = []
    for line_no, line in iter_lines(kg_path):
        fields = line.split()
        if len(fields) != 3:
            raise DatasetError(
                f"{kg_path}:{line_no}: expected 3 integers 'head relation tail', got {len(fields)} fields"
            )
        raw.append(
            tuple(
                parse_int(kg_path, line_no, f, what)
                for f, what in zip(fields, ("head", "relation", "tail"), strict=True)
            )
        )
    triples = np.array(raw, dtype=np.int64).reshape(-1, 3)
    n_entities = max(n_items, int(triples[:, [0, 2]].max()) + 1 if len(triples) else 0)
    n_relations = int(triples[:, 1].max()) + 1 if len(triples) else 0
    unique_triples = np.unique(triples, axis=0) if len(triples) else triples
    in_triples = np.zeros(n_entities, dtype=bool)
    in_triples[unique_triples[:, 0]] = True
    in_triples[unique_triples[:, 2]] = True
    kg = KnowledgeGraph(
        triples=unique_triples,
        entity_ids=[str(e) for e in range(n_entities)],
        relation_ids=[str(r) for r in range(n_relations)],
        item_entity=np.arange(n_items, dtype=np.int64),
    )
    stats = KGStats(
        n_entities=n_entities,
        n_relations=n_relations,
        n_triples=int(len(unique_triples)),
        n_duplicate_triples=int(len(triples) - len(unique_triples)),
        n_linked_items=n_items,
        n_unlinked_items=0,
        n_links_to_entities_without_triples=int((~in_triples[:n_items]).sum()),
        n_links_for_items_without_interactions=0,
    )
    logger.info("knowledge graph %s: %s", kg_path.name, stats.as_dict())
    return kg, stats
