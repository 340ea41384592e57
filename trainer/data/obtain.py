"""Obtain the RecBole MovieLens-100K atomic files (with the Freebase KG) on a fresh machine.

Source, first match wins:
1. ``$MODALREC_SHARED_DATASETS/ml-100k`` when the variable is set, else ``<repo>/../shared/datasets/ml-100k``;
2. the PyPI wheel ``recbole==1.2.1`` (``python -m pip download --no-deps``), whose
   ``recbole/dataset_example/ml-100k/`` holds the same files.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from trainer.data.dataset import DatasetError

logger = logging.getLogger(__name__)

ML100K_FILES = ("ml-100k.inter", "ml-100k.item", "ml-100k.user", "ml-100k.kg", "ml-100k.link")
RECBOLE_REQUIREMENT = "recbole==1.2.1"
WHEEL_FOLDER = "recbole/dataset_example/ml-100k/"
REPO_ROOT = Path(__file__).resolve().parents[2]


class ObtainError(DatasetError):
    """The dataset could be found neither locally nor on PyPI."""


def shared_ml100k_dir() -> Path:
    root = os.environ.get("MODALREC_SHARED_DATASETS")
    base = Path(root) if root else REPO_ROOT.parent / "shared" / "datasets"
    return base / "ml-100k"


def download_recbole_wheel(directory: Path) -> Path:
    """``pip download recbole==1.2.1 --no-deps`` into ``directory``; returns the wheel's path."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        RECBOLE_REQUIREMENT,
        "--no-deps",
        "--only-binary",
        ":all:",
        "-d",
        str(directory),
    ]
    logger.info("downloading %s: %s", RECBOLE_REQUIREMENT, " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(directory.glob("recbole-*.whl"))
    if result.returncode != 0 or not wheels:
        raise ObtainError(
            f"could not download {RECBOLE_REQUIREMENT} from PyPI (pip exit {result.returncode}): "
            f"{result.stderr.strip()[-500:]}"
        )
    return wheels[0]


def extract_ml100k(wheel: Path, dest: Path) -> None:
    """Copy ``recbole/dataset_example/ml-100k/ml-100k.*`` out of a wheel into ``dest``."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            for name in ML100K_FILES:
                try:
                    with archive.open(WHEEL_FOLDER + name) as source, (dest / name).open("wb") as target:
                        shutil.copyfileobj(source, target)
                except KeyError:
                    raise ObtainError(f"{wheel.name} has no {WHEEL_FOLDER + name}") from None
    except zipfile.BadZipFile as exc:
        raise ObtainError(f"{wheel} is not a valid wheel: {exc}") from exc


def _complete(directory: Path) -> bool:
    return all(
        (directory / name).is_file() and (directory / name).stat().st_size > 0 for name in ML100K_FILES
    )


def obtain_ml100k(
    dest: str | Path,
    *,
    shared_dir: Path | None = None,
    download_wheel: Callable[[Path], Path] = download_recbole_wheel,
) -> Path:
    """Make ``dest`` a RecBole ml-100k dataset directory (the five ``ml-100k.*`` files); returns ``dest``.

    Idempotent (a complete ``dest`` is left as is) and atomic (files are gathered in a temporary sibling
    directory, then renamed to ``dest``).

    Args:
        dest: target directory, e.g. ``data/ml-100k``.
        shared_dir: local copy to use instead of :func:`shared_ml100k_dir` (tests).
        download_wheel: downloads the recbole wheel into a directory and returns its path (tests inject one).
    """
    dest = Path(dest)
    if _complete(dest):
        logger.info("%s already holds ml-100k", dest)
        return dest
    if dest.exists() and any(dest.iterdir()):
        raise ObtainError(f"{dest} exists but lacks some of {', '.join(ML100K_FILES)}; remove it and retry")
    source = shared_dir if shared_dir is not None else shared_ml100k_dir()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        if _complete(source):
            logger.info("copying ml-100k from %s", source)
            for name in ML100K_FILES:
                shutil.copyfile(source / name, tmp / name)
        else:
            with tempfile.TemporaryDirectory(prefix="recbole-wheel-") as download_dir:
                extract_ml100k(download_wheel(Path(download_dir)), tmp)
        if dest.exists():
            dest.rmdir()
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("ml-100k ready at %s", dest)
    return dest
