"""Load benchmark of the real server on loopback: ``python -m service.bench [--skip-large]``.

In one run it prints requests/s and p50/p99 latency for ``POST /recommend/{user_id}`` and the no-op
``GET /healthz`` of the same server at a Baby-sized catalogue (7,050 items, exact flat index), the
p50/p99 at half of /recommend's saturation rate, the failures seen while a new bundle is swapped in
under load, and at 1M items (approximate index shipped in the bundle: IVF over the MIPS-to-L2 reduction
by default, ``--large-index hnsw`` for HNSW) its recall@20 against exact search at several search
depths and p50/p99 at a fixed 200 requests/s.

Item embeddings: ``--source-bundle`` takes a trained bundle's item (and user) embeddings; without it a
structured synthetic catalogue is generated (low-rank clusters with log-normal norms, users mixing 1-3
clusters), and the 1M catalogue is the base catalogue expanded by perturbation (each copy moved by
noise of half the median nearest-neighbour distance), never i.i.d. Gaussians.

Everything runs on 127.0.0.1 with a bounded request count and time. Needs no torch.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from service.bundle import Bundle, load_bundle, write_bundle
from service.index import DEFAULT_IVF_NPROBE, INDEX_FILE, ItemIndex, build_index, build_index_file

logger = logging.getLogger("service.bench")
ADMIN_TOKEN = "bench-token"


# -- catalogues -----------------------------------------------------------------------------------
@dataclass
class Catalogue:
    user_embeddings: np.ndarray
    item_embeddings: np.ndarray
    seen_indptr: np.ndarray
    seen_indices: np.ndarray
    source: str


def synthetic_catalogue(n_users: int, n_items: int, dim: int, seed: int) -> Catalogue:
    """Low-rank cluster structure: 64 clusters in a rank-16 subspace, log-normal item norms."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(16, dim)) / np.sqrt(16)
    centers = rng.normal(size=(64, 16)) @ basis
    cluster = rng.integers(0, 64, n_items)
    items = (
        centers[cluster]
        + 0.35 * rng.normal(size=(n_items, 16)) @ basis
        + 0.05 * rng.normal(size=(n_items, dim))
    )
    items *= rng.lognormal(0.0, 0.3, size=(n_items, 1))
    mixes = rng.integers(0, 64, (n_users, 3))
    weights = rng.dirichlet(np.ones(3), n_users)
    users = np.einsum("uk,ukd->ud", weights, centers[mixes]) + 0.1 * rng.normal(size=(n_users, dim))
    seen_counts = rng.integers(3, 10, n_users)
    indptr = np.concatenate([[0], np.cumsum(seen_counts)]).astype(np.int64)
    indices = np.concatenate([rng.choice(n_items, c, replace=False) for c in seen_counts]).astype(np.int64)
    return Catalogue(
        users.astype(np.float32), items.astype(np.float32), indptr, indices, "synthetic low-rank clusters"
    )


def bundle_catalogue(path: Path) -> Catalogue:
    bundle: Bundle = load_bundle(path)
    return Catalogue(
        bundle.user_embeddings,
        bundle.item_embeddings,
        bundle.seen_indptr,
        bundle.seen_indices,
        f"trained bundle {bundle.version} ({bundle.manifest.get('model')}, {bundle.manifest.get('dataset')})",
    )


def resize_items(
    base: np.ndarray, n_items: int, seed: int, expansion: str = "noise", noise: float = 0.5
) -> np.ndarray:
    """Expand (or cut) ``base`` [n, d] to ``n_items`` rows; the first ``n`` rows are ``base`` itself.

    ``neighbour``: each new item is a random point on the segment between a random base item and one of
    its 10 nearest neighbours, plus isotropic noise of expected norm ``noise`` x the median
    nearest-neighbour distance (new items follow the data manifold). ``noise``: a random base item plus
    isotropic noise of expected norm ``noise`` x the median NN distance (near-duplicate clouds, a hard
    case for graph search because the top-k become near-ties).
    """
    if n_items <= len(base):
        return base[:n_items].copy()
    if expansion not in ("neighbour", "noise"):
        raise ValueError(f"expansion must be 'neighbour' or 'noise', got {expansion!r}")
    rng = np.random.default_rng(seed)
    dim = base.shape[1]
    import faiss

    l2 = faiss.IndexFlatL2(dim)
    l2.add(np.ascontiguousarray(base, dtype=np.float32))
    n_neighbours = min(11, len(base))
    squared, neighbours = l2.search(np.ascontiguousarray(base, dtype=np.float32), n_neighbours)
    sigma = noise * float(np.median(np.sqrt(np.maximum(squared[:, 1], 0)))) / np.sqrt(dim)
    out = np.empty((n_items, dim), dtype=np.float32)
    out[: len(base)] = base
    for start in range(len(base), n_items, len(base)):
        stop = min(start + len(base), n_items)
        rows = rng.integers(0, len(base), stop - start)
        points = base[rows]
        if expansion == "neighbour":
            partners = base[neighbours[rows, rng.integers(1, n_neighbours, stop - start)]]
            points = points + rng.random((stop - start, 1), dtype=np.float32) * (partners - points)
        out[start:stop] = points + sigma * rng.standard_normal((stop - start, dim), dtype=np.float32)
    return out


def write_catalogue_bundle(
    root: Path, catalogue: Catalogue, items: np.ndarray, index_file: Path | None
) -> Path:
    n_items = len(items)
    indices = catalogue.seen_indices[catalogue.seen_indices < n_items]
    counts = np.diff(catalogue.seen_indptr)
    keep = catalogue.seen_indices < n_items
    per_user = np.add.reduceat(keep.astype(np.int64), catalogue.seen_indptr[:-1]) if len(keep) else counts * 0
    per_user[counts == 0] = 0
    indptr = np.concatenate([[0], np.cumsum(per_user)]).astype(np.int64)
    return write_bundle(
        root,
        model="bench",
        dataset=catalogue.source,
        user_ids=[f"u{i}" for i in range(len(catalogue.user_embeddings))],
        item_ids=[f"i{i}" for i in range(n_items)],
        user_embeddings=catalogue.user_embeddings,
        item_embeddings=items,
        seen_indptr=indptr,
        seen_indices=indices,
        popularity=np.bincount(indices, minlength=n_items).astype(np.float32),
        extra_files={INDEX_FILE: index_file} if index_file else None,
    )


# -- load generator -------------------------------------------------------------------------------
@dataclass
class LoadResult:
    endpoint: str
    mode: str
    requests: int
    failures: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    offered_rps: float | None = None


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        body = await self.reader.readexactly(length) if length else b""
        return status, body

    def close(self) -> None:
        self.writer.close()


def http_request(method: str, path: str, body: bytes = b"", headers: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}"
    if body or method == "POST":
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def recommend_requests(n_users: int, n: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [http_request("POST", f"/recommend/u{u}", b'{"k": 20}') for u in rng.integers(0, n_users, n)]


async def closed_loop(
    port: int, requests: list[bytes], connections: int, seconds: float, name: str
) -> LoadResult:
    """Saturation: ``connections`` clients each sending back-to-back for ``seconds``."""
    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + seconds

    async def client(offset: int) -> None:
        nonlocal failures
        conn = await Connection.open(port)
        i = offset
        try:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                status, _ = await conn.request(requests[i % len(requests)])
                latencies.append(time.perf_counter() - start)
                failures += status != 200
                i += connections
        finally:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(connections)))
    elapsed = time.perf_counter() - started
    return summarise(name, "saturation", latencies, failures, elapsed, None)


async def open_loop(
    port: int,
    requests: list[bytes],
    rate: float,
    seconds: float,
    name: str,
    connections: int = 32,
    during=None,
    versions: set[str] | None = None,
) -> LoadResult:
    """Fixed arrival rate; latency counted from the scheduled send time (no coordinated omission)."""
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await Connection.open(port))
    latencies: list[float] = []
    failures = 0
    n_total = int(rate * seconds)

    async def one(i: int, scheduled: float) -> None:
        nonlocal failures
        conn = await pool.get()
        try:
            status, body = await conn.request(requests[i % len(requests)])
        except (OSError, asyncio.IncompleteReadError):
            failures += 1
            conn = await Connection.open(port)
        else:
            failures += status != 200
            if versions is not None and status == 200:
                versions.add(json.loads(body)["model_version"])
        latencies.append(time.perf_counter() - scheduled)
        pool.put_nowait(conn)

    # One dispatcher starts each request at its scheduled time (creating every task up front would
    # keep the loop busy at the start and charge that client-side lag to the server's first requests).
    tasks: list[asyncio.Task] = []
    side = asyncio.get_running_loop().run_in_executor(None, during) if during else None
    start = time.perf_counter() + 0.05
    for i in range(n_total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    if side is not None:
        await side
    elapsed = time.perf_counter() - start
    while not pool.empty():
        pool.get_nowait().close()
    return summarise(name, "fixed rate", latencies, failures, elapsed, rate)


def measure(load) -> LoadResult:
    """Run one load phase (a coroutine) with the generator's own garbage collector paused, so that
    its pauses are not charged to the server's latency."""
    gc.collect()
    gc.disable()
    try:
        return asyncio.run(load)
    finally:
        gc.enable()


def summarise(
    name: str, mode: str, latencies: list[float], failures: int, elapsed: float, rate
) -> LoadResult:
    ms = np.asarray(latencies) * 1000
    return LoadResult(
        name,
        mode,
        len(latencies),
        failures,
        round(elapsed, 2),
        round(len(latencies) / elapsed, 1),
        round(float(np.percentile(ms, 50)), 2) if len(ms) else float("nan"),
        round(float(np.percentile(ms, 99)), 2) if len(ms) else float("nan"),
        rate,
    )


# -- server -----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, bundle_root: Path, workers: int, log_path: Path) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "MODALREC_BUNDLE_ROOT": str(bundle_root),
            "MODALREC_PORT": str(self.port),
            "MODALREC_WORKERS": str(workers),
            "MODALREC_ADMIN_TOKEN": ADMIN_TOKEN,
            "MODALREC_RELOAD_POLL_S": "0",
            "MODALREC_LOG_LEVEL": "warning",
        }
        env.pop("MODALREC_REDIS_URL", None)
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service"], env=env, stdout=self.log, stderr=self.log
        )

    def wait_ready(self, timeout: float = 300) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("server did not become ready")

    def admin_reload(self) -> dict:
        import urllib.request

        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/admin/reload",
            method="POST",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


# -- phases -----------------------------------------------------------------------------------------
def index_recall(
    catalogue: Catalogue,
    items: np.ndarray,
    index_path: Path,
    depths: list[int],
    n_queries: int,
) -> list[dict[str, float]]:
    """Per search depth (HNSW ef_search or IVF nprobe, by the index's kind): recall@20 of the service's
    approximate search vs exact search over ``n_queries`` user queries, the mean ratio of the summed
    top-20 scores (approximate / exact), and the single-query search time in ms (p50, p99)."""
    from service.index import load_index_file

    main = load_index_file(index_path, len(items), items.shape[1])
    exact = build_index(items, flat_max_items=len(items))
    rng = np.random.default_rng(1)
    n_queries = min(n_queries, len(catalogue.user_embeddings))
    queries = catalogue.user_embeddings[rng.choice(len(catalogue.user_embeddings), n_queries, replace=False)]
    exact_scores, exact_rows = exact.search(queries, 20)
    del exact
    out = []
    for depth in depths:
        approx = ItemIndex(main, items, ef_search=depth, nprobe=depth)
        hits = 0
        ratios, seconds = [], []
        for query, truth, truth_scores in zip(queries, exact_rows, exact_scores, strict=True):
            started = time.perf_counter()
            rows, scores = approx._search_main(query.reshape(1, -1), 20)
            seconds.append(time.perf_counter() - started)
            hits += len(set(rows.tolist()) & set(truth.tolist()))
            ratios.append(float(scores[:20].sum() / truth_scores.sum()))
        ms = np.asarray(seconds) * 1000
        out.append(
            {
                "depth": depth,
                "recall_at_20": round(hits / (20 * n_queries), 4),
                "top20_score_sum_ratio": round(float(np.mean(ratios)), 4),
                "search_ms_p50": round(float(np.percentile(ms, 50)), 3),
                "search_ms_p99": round(float(np.percentile(ms, 99)), 3),
            }
        )
    return out


def hnsw_recall(
    catalogue: Catalogue, items: np.ndarray, index_path: Path, ef_search: int, n_queries: int
) -> tuple[float, float]:
    """(recall@20 vs exact, mean summed top-20 score ratio) at one search depth (ef_search or nprobe)."""
    (row,) = index_recall(catalogue, items, index_path, [ef_search], n_queries)
    return row["recall_at_20"], row["top20_score_sum_ratio"]


def interleaved_saturation(
    port: int, phases: list[tuple[str, list[bytes]]], connections: int, seconds: float, rounds: int
) -> list[LoadResult]:
    """Alternate the endpoints' saturation runs ``rounds`` times and pool each endpoint's runs: the
    background load of a shared machine drifts, and alternating exposes both endpoints to it alike."""
    pooled: dict[str, list[LoadResult]] = {name: [] for name, _ in phases}
    for _ in range(rounds):
        for name, requests in phases:
            pooled[name].append(measure(closed_loop(port, requests, connections, seconds / rounds, name)))
    merged = []
    for name, runs in pooled.items():
        total = sum(r.requests for r in runs)
        elapsed = sum(r.seconds for r in runs)
        p50 = float(np.average([r.p50_ms for r in runs], weights=[max(r.requests, 1) for r in runs]))
        merged.append(
            LoadResult(
                name,
                f"saturation, {rounds} alternating runs",
                total,
                sum(r.failures for r in runs),
                round(elapsed, 2),
                round(total / elapsed, 1),
                round(p50, 2),
                max(r.p99_ms for r in runs),
                None,
            )
        )
    return merged


def run(args: argparse.Namespace, work: Path) -> dict:
    if args.source_bundle:
        catalogue = bundle_catalogue(Path(args.source_bundle))
    else:
        catalogue = synthetic_catalogue(args.users, args.small_items, args.dim, seed=0)
    report: dict = {
        "catalogue": catalogue.source,
        "cpus": os.cpu_count(),
        "workers": args.workers,
        "results": [],
    }
    results: list[LoadResult] = report["results"]
    user_requests = recommend_requests(len(catalogue.user_embeddings), 4096, seed=2)
    noop = [http_request("GET", "/healthz")]

    if not args.skip_small:
        run_small(args, work, catalogue, user_requests, noop, report)
    if not args.skip_large:
        run_large(args, work, catalogue, user_requests, report)
    report["results"] = [asdict(r) for r in results]
    return report


def run_small(
    args: argparse.Namespace,
    work: Path,
    catalogue: Catalogue,
    user_requests: list[bytes],
    noop: list[bytes],
    report: dict,
) -> None:
    results: list[LoadResult] = report["results"]
    small_items = resize_items(
        catalogue.item_embeddings, args.small_items, seed=3, expansion=args.expansion, noise=args.noise
    )
    small_root = work / "small"
    write_catalogue_bundle(small_root, catalogue, small_items, None)
    server = Server(small_root, args.workers, work / "server-small.log")
    try:
        server.wait_ready()
        measure(closed_loop(server.port, user_requests, args.connections, 1.0, "warm-up"))
        sat_noop, sat_rec = interleaved_saturation(
            server.port,
            [("GET /healthz (no-op)", noop), ("POST /recommend", user_requests)],
            args.connections,
            args.seconds,
            args.rounds,
        )
        half = measure(
            open_loop(server.port, user_requests, sat_rec.rps / 2, args.seconds, "POST /recommend")
        )
        results += [sat_noop, sat_rec, half]
        report["small"] = {
            "items": args.small_items,
            "recommend_over_noop": round(sat_rec.rps / sat_noop.rps, 3),
        }

        versions: set[str] = set()
        reload_info: dict = {}

        def publish_and_reload() -> None:
            time.sleep(args.seconds / 3)
            shifted = resize_items(catalogue.item_embeddings * 1.01, args.small_items, seed=4)
            write_catalogue_bundle(small_root, catalogue, shifted, None)
            reload_info.update(server.admin_reload())

        during = measure(
            open_loop(
                server.port,
                user_requests,
                sat_rec.rps / 2,
                args.seconds,
                "POST /recommend during reload",
                during=publish_and_reload,
                versions=versions,
            )
        )
        results.append(during)
        report["reload"] = {
            "admin": reload_info,
            "versions_served": sorted(versions),
            "failures": during.failures,
        }
    finally:
        server.stop()


def run_large(
    args: argparse.Namespace, work: Path, catalogue: Catalogue, user_requests: list[bytes], report: dict
) -> None:
    results: list[LoadResult] = report["results"]
    large_items = resize_items(
        catalogue.item_embeddings, args.large_items, seed=5, expansion=args.expansion, noise=args.noise
    )
    index_path = work / INDEX_FILE
    started = time.perf_counter()
    description = build_index_file(
        large_items,
        index_path,
        flat_max_items=args.flat_max_items,
        hnsw_m=args.hnsw_m,
        ef_construction=args.ef_construction,
        large_kind=args.large_index,
        ivf_nlist=args.ivf_nlist,
        ivf_nprobe=args.ivf_nprobe,
    )
    build_s = time.perf_counter() - started
    served_depth = args.ivf_nprobe if args.large_index == "ivf" else args.ef_search
    depths = sorted({served_depth, *(int(d) for d in args.recall_depths.split(",") if d)})
    sweep = index_recall(catalogue, large_items, index_path, depths, args.recall_queries)
    served = next(row for row in sweep if row["depth"] == served_depth)
    report["large"] = {
        "items": args.large_items,
        "index": description,
        "build_seconds": round(build_s, 1),
        "served_depth": served_depth,
        "recall_at_20": served["recall_at_20"],
        "top20_score_sum_ratio": served["top20_score_sum_ratio"],
        "recall_by_depth": sweep,
        "expansion": f"{args.expansion} (noise {args.noise})",
    }
    large_root = work / "large"
    write_catalogue_bundle(large_root, catalogue, large_items, index_path)
    del large_items
    os.environ["MODALREC_HNSW_EF_SEARCH"] = str(args.ef_search)
    os.environ["MODALREC_IVF_NPROBE"] = str(args.ivf_nprobe)
    name = f"POST /recommend ({args.large_items} items, {description['kind'].upper()})"
    server = Server(large_root, args.workers, work / "server-large.log")
    try:
        server.wait_ready()
        measure(closed_loop(server.port, user_requests, 4, 1.0, "warm-up"))
        results.append(
            measure(open_loop(server.port, user_requests, args.large_rate, args.seconds, name))
        )
        results.append(
            measure(closed_loop(server.port, user_requests, args.connections, args.seconds, name))
        )
    finally:
        server.stop()


def print_report(report: dict) -> None:
    print(f"catalogue: {report['catalogue']}; cpus: {report['cpus']}; uvicorn workers: {report['workers']}")
    print("| endpoint | mode | offered req/s | req/s | p50 ms | p99 ms | requests | failed |")
    print("|---|---|---|---|---|---|---|---|")
    for r in report["results"]:
        offered = f"{r['offered_rps']:.0f}" if r["offered_rps"] else "-"
        print(
            f"| {r['endpoint']} | {r['mode']} | {offered} | {r['rps']:.0f} | {r['p50_ms']} | {r['p99_ms']} | "
            f"{r['requests']} | {r['failures']} |"
        )
    print(f"small: {report.get('small')}")
    print(f"reload under load: {report.get('reload')}")
    if "large" in report:
        print(f"large: {report['large']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--source-bundle", help="trained bundle (dir or root with current) for the embeddings"
    )
    parser.add_argument("--users", type=int, default=19_445, help="synthetic users (Baby has 19,445)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--small-items", type=int, default=7_050)
    parser.add_argument("--large-items", type=int, default=1_000_000)
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--skip-small", action="store_true", help="only the large-catalogue part")
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each load phase")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--large-rate", type=float, default=200.0)
    parser.add_argument("--flat-max-items", type=int, default=200_000)
    parser.add_argument("--large-index", choices=["ivf", "hnsw"], default="ivf")
    parser.add_argument("--ivf-nlist", type=int, default=None, help="IVF cells (default about 4 sqrt(n))")
    parser.add_argument(
        "--ivf-nprobe", type=int, default=DEFAULT_IVF_NPROBE, help="IVF cells scanned (served)"
    )
    parser.add_argument(
        "--recall-depths",
        default="8,16,32,64",
        help="also measure recall at these search depths (nprobe for IVF, ef_search for HNSW)",
    )
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=80)
    parser.add_argument("--ef-search", type=int, default=128)
    parser.add_argument("--recall-queries", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating saturation runs per endpoint")
    parser.add_argument("--expansion", choices=["noise", "neighbour"], default="noise")
    parser.add_argument("--noise", type=float, default=0.5, help="noise norm / median NN distance")
    parser.add_argument("--keep", action="store_true", help="keep the bundles and server logs in /tmp")
    parser.add_argument("--out", help="also write the report as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    threading.current_thread().name = "bench"
    work = Path(tempfile.mkdtemp(prefix="modalrec-bench-"))
    try:
        report = run(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_report(report)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
