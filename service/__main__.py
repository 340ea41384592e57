"""``python -m service --bundle-root DIR [--host H --port P --workers N]``.

Command-line flags override ``MODALREC_*`` environment variables. With several workers,
``PROMETHEUS_MULTIPROC_DIR`` is set (to a fresh temporary directory unless already given) so that
/metrics aggregates every worker, and each worker gets ``threads_per_worker`` FAISS/ONNX threads. A given
directory is created if missing and emptied of a previous run's metric files before the workers start.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

# the file names prometheus_client's multiprocess mode writes: <type>_[<mode>_]<pid>.db
_METRIC_FILE_PREFIXES = ("counter_", "gauge_", "histogram_", "summary_")


def prepare_multiproc_dir(path: str) -> None:
    """Make ``PROMETHEUS_MULTIPROC_DIR`` usable: create it (prometheus_client does not, and every worker then fails
    at start-up), and delete metric files a previous run left (they would be added to this run's counters, and a
    killed worker's gauges would stay live), as prometheus_client asks for before start-up."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        if stale.name.startswith(_METRIC_FILE_PREFIXES):
            stale.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    parser.add_argument("--bundle-root", help="bundle root with a `current` symlink (MODALREC_BUNDLE_ROOT)")
    parser.add_argument("--host", help="MODALREC_HOST (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="MODALREC_PORT (default 8000)")
    parser.add_argument("--workers", type=int, help="MODALREC_WORKERS (default 1)")
    parser.add_argument("--redis-url", help="MODALREC_REDIS_URL (default: embedded MemoryStore)")
    args = parser.parse_args(argv)
    for flag, env in (
        ("bundle_root", "MODALREC_BUNDLE_ROOT"),
        ("host", "MODALREC_HOST"),
        ("port", "MODALREC_PORT"),
        ("workers", "MODALREC_WORKERS"),
        ("redis_url", "MODALREC_REDIS_URL"),
    ):
        value = getattr(args, flag)
        if value is not None:
            os.environ[env] = str(value)

    from pydantic import ValidationError

    from service.settings import Settings

    try:
        settings = Settings()  # type: ignore[call-arg]  # validates before forking workers
    except ValidationError as exc:
        problems = "; ".join(
            f"MODALREC_{'_'.join(str(part) for part in error['loc']).upper()}: {error['msg']}" for error in exc.errors()
        )
        print(f"error: invalid settings: {problems}", file=sys.stderr)
        return 2
    threads = str(settings.threads_per_worker)
    os.environ.setdefault("OMP_NUM_THREADS", threads)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", threads)
    os.environ.setdefault("MKL_NUM_THREADS", threads)
    if settings.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="modalrec-prom-")
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # the metrics use it whenever it is set, one worker or more
        prepare_multiproc_dir(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    if settings.workers > 1 and not settings.redis_url:
        print(
            "warning: several workers with the in-process MemoryStore: each worker has its own online state;"
            " set MODALREC_REDIS_URL",
            file=sys.stderr,
        )

    import uvicorn

    uvicorn.run(
        "service.app:create_app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
