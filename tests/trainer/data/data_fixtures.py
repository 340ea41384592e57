"""Tiny on-disk fixtures for the data-layer tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_mmrec(directory: Path, rows: list[tuple[str, str, int]], name: str | None = None) -> Path:
    name = name or directory.name
    lines = ["userID\titemID\trating\tx_label"] + [f"{u}\t{i}\t5\t{label}" for u, i, label in rows]
    return write_lines(directory / f"{name}.inter", lines)


def write_json(path: Path, value: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


def write_feature(directory: Path, modality: str, matrix: np.ndarray) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{modality}_feat.npy"
    np.save(path, matrix)
    return path


def write_recbole(
    directory: Path,
    interactions: list[tuple[str, str]],
    items: dict[str, tuple[str, str, str]] | None = None,
    triples: list[tuple[str, str, str]] | None = None,
    links: list[tuple[str, str]] | None = None,
) -> Path:
    """RecBole atomic files named after the directory; items map id -> (title, year, genres)."""
    name = directory.name
    write_lines(
        directory / f"{name}.inter",
        ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
        + [f"{u}\t{i}\t4\t{880000000 + n}" for n, (u, i) in enumerate(interactions)],
    )
    if items is not None:
        write_lines(
            directory / f"{name}.item",
            ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
            + [f"{i}\t{title}\t{year}\t{genres}" for i, (title, year, genres) in items.items()],
        )
    if triples is not None:
        write_lines(
            directory / f"{name}.kg",
            ["head_id:token\trelation_id:token\ttail_id:token"] + ["\t".join(t) for t in triples],
        )
    if links is not None:
        write_lines(
            directory / f"{name}.link", ["item_id:token\tentity_id:token"] + ["\t".join(x) for x in links]
        )
    return directory


TITLES = [
    ("Toy Story", "1995", "Animation Children's Comedy"),
    ("Toy Story 2", "1999", "Animation Children's Comedy"),
    ("GoldenEye", "1995", "Action Adventure Thriller"),
    ("Tomorrow Never Dies", "1997", "Action Romance Thriller"),
    ("Schindler's List", "1993", "Drama War"),
    ("Saving Private Ryan", "1998", "Action Drama War"),
    ("Scream", "1996", "Horror Thriller"),
    ("Scream 2", "1997", "Horror Thriller"),
    ("Titanic", "1997", "Action Drama Romance"),
    ("Fargo", "1996", "Crime Drama Thriller"),
]


def small_movielens(directory: Path, n_users: int = 12) -> Path:
    """A RecBole dataset with 10 titled items, a small KG with relation-tagged neighbours, one unlinked item
    (10), and an item listed in .item but never rated (11)."""
    rng = np.random.default_rng(0)
    interactions = []
    for user in range(1, n_users + 1):
        n = 3 + user % 6
        for item in rng.choice(10, size=n, replace=False):
            interactions.append((str(user), str(int(item) + 1)))
    items = {str(i + 1): TITLES[i] for i in range(10)}
    items["11"] = ("Never Rated", "2000", "Drama")
    genres = {"Animation": "m.anim", "Action": "m.action", "Drama": "m.drama", "Horror": "m.horror"}
    triples, links = [], []
    for i in range(9):  # item 10 stays unlinked
        entity = f"m.film{i + 1}"
        links.append((str(i + 1), entity))
        for word, genre_entity in genres.items():
            if word in TITLES[i][2]:
                triples.append((entity, "film.film.genre", genre_entity))
                triples.append((genre_entity, "film.film_genre.films_in_this_genre", entity))
        triples.append((entity, "film.film.language", "m.english"))
    triples.append(("m.film1", "film.film.sequel", "m.film2"))
    triples.append(("m.film7", "film.film.sequel", "m.film8"))
    links.append(("11", "m.film11"))
    triples.append(("m.film11", "film.film.genre", "m.drama"))
    return write_recbole(directory, interactions, items, triples, links)
