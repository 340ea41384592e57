"""Service load benchmark (not collected by pytest): the same as ``python -m service.bench``.

    .venv/bin/python tests/benchmarks/bench_service.py --source-bundle RUN/bundles/current --seconds 8
"""

from service.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
