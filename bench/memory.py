"""Serving memory: how much each worker holds of a model that the workers share, and load time.

    python bench/memory.py [--users 1000000 --items 100000 --factors 64 --workers 4]
                           [--learners 10000] [--write-readme]
    python bench/memory.py --users 10000000 --items 1000000 --workers 2 --write-readme

Sets up a throw-away PostgreSQL database and a generated model (bench/serve.py's: random
factors, five interactions per learner), then:

1. starts `recsvc serve --workers W` with no model and measures each idle worker;
2. verifies the artifact once in this process, as the first load on a machine does (the
   checksums; later loads find them recorded and only map the files);
3. registers the model, starts `recsvc serve --workers W` again, and reads each worker's
   load time from its log;
4. opens connections until it holds one to every worker (a connection's server side is found
   in /proc/net/tcp and /proc/<pid>/fd), and on each asks for the recommendations of
   `--learners` learners spread over the whole id range, one request at a time: the p50 per
   worker;
5. measures every worker's RSS, PSS and USS (private memory) from /proc/<pid>/smaps_rollup.

Prints one JSON object, and with --write-readme the table in README (section memory-1m or
memory-10m by the number of learners). Linux only (/proc).
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from common import (  # noqa: E402
    BENCH_KEY,
    DEFAULT_PG,
    free_port,
    throwaway_database,
    write_readme_section,
)
from recsvc import artifact  # noqa: E402
from serve import generated_model, register, snapshot_cutoff  # noqa: E402

MB = 1024 * 1024
LOADED = re.compile(r"serving model \S+ \(loaded in ([0-9.]+) s\)")


class Server:
    """`recsvc serve --workers W` with its log in a file; knows its workers' pids."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path, workers: int):
        self.proc, self.port, self.log, self.workers = proc, port, log, workers

    def worker_pids(self) -> list[int]:
        if self.workers == 1:
            return [self.proc.pid]
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == self.proc.pid and b"spawn_main" in cmdline:
                pids.append(int(entry.name))
        return sorted(pids)

    def load_seconds(self) -> dict[int, float]:
        """Each worker's model load time, from its JSON log line."""
        found = {}
        for line in self.log.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            match = LOADED.search(str(record.get("message", "")))
            if match:
                found[int(record["pid"])] = float(match.group(1))
        return found


@contextmanager
def server(database_url: str, models_dir: Path, workers: int, model: bool) -> Iterator[Server]:
    port = free_port()
    log = models_dir.parent / f"serve-{port}.log"
    environment = {
        **os.environ,
        "RECSVC_DATABASE_URL": database_url,
        "RECSVC_MODELS_DIR": str(models_dir),
        "RECSVC_API_KEYS": json.dumps({BENCH_KEY: ["admin", "read", "ingest"]}),
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "recsvc", "serve", "--port", str(port)]
    command += ["--workers", str(workers), "--log-level", "info"]
    with log.open("wb") as sink:
        proc = subprocess.Popen(command, env=environment, stdout=sink, stderr=sink)  # noqa: S603
    running = Server(proc, port, log, workers)
    try:
        deadline = time.monotonic() + 600
        while True:
            ready = len(running.worker_pids()) == workers and (
                not model or len(running.load_seconds()) >= workers
            )
            if ready and _get(port, "/healthz")[0] == 200:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"recsvc did not start; see {log}")
            time.sleep(0.5)
        yield running
    finally:
        proc.terminate()
        proc.wait(60)


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", path, headers={"X-API-Key": BENCH_KEY})
        response = connection.getresponse()
        return response.status, response.read()
    except OSError:
        return 0, b""


def _socket_inode(server_port: int, client_port: int) -> str | None:
    """The inode of the server side of the TCP connection from `client_port`."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        remote_port = int(fields[2].split(":")[1], 16)
        if (local_port, remote_port) == (server_port, client_port):
            return fields[9]
    return None


def _owner(pids: list[int], inode: str) -> int | None:
    target = f"socket:[{inode}]"
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == target:
                    return pid
            except OSError:
                continue
    return None


def connection_to(running: Server, pid: int) -> http.client.HTTPConnection:
    """A kept-alive connection that the worker `pid` accepted (others are closed)."""
    for _ in range(500):
        connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
        connection.request("GET", "/healthz")
        connection.getresponse().read()
        assert connection.sock is not None
        inode = _socket_inode(running.port, connection.sock.getsockname()[1])
        if inode is not None and _owner(running.worker_pids(), inode) == pid:
            return connection
        connection.close()
    raise RuntimeError(f"no connection reached worker {pid}")


def sweep(connection: http.client.HTTPConnection, users: int, learners: int) -> list[float]:
    """Recommendations for `learners` learners spread over all `users`, one at a time: ms."""
    step = max(users // learners, 1)
    timings = []
    for k in range(learners):
        path = f"/v1/users/u{(k * step) % users:07d}/recommendations?n=10"
        started = time.perf_counter()
        connection.request("GET", path, headers={"X-API-Key": BENCH_KEY})
        response = connection.getresponse()
        response.read()
        timings.append((time.perf_counter() - started) * 1000)
        if response.status != 200:
            raise RuntimeError(f"{path}: HTTP {response.status}")
    return timings


def memory(pid: int) -> dict[str, float]:
    """RSS, PSS and USS (private clean + dirty) in MB, from /proc/<pid>/smaps_rollup."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, amount = line.split(":", 1)
        values[name] = int(amount.split()[0]) * 1024
    uss = values["Private_Clean"] + values["Private_Dirty"]
    return {
        "rss_mb": round(values["Rss"] / MB, 1),
        "pss_mb": round(values["Pss"] / MB, 1),
        "uss_mb": round(uss / MB, 1),
    }


def lookups_and_recall(path: Path, users: int) -> tuple[float, dict[str, Any] | None]:
    """Microseconds per learner id lookup in the mapped vocabulary; and with an item index,
    its recall@10 against exact scoring for 200 learners, at the calibrated probes."""
    model = artifact.load(path)
    ids = [f"u{(k * 7919) % users:07d}" for k in range(10_000)]
    model.users.indices_of(ids)  # pages in, as a serving worker's are after its first requests
    started = time.perf_counter()
    rows = model.users.indices_of(ids)
    lookup_us = (time.perf_counter() - started) / len(ids) * 1e6
    assert (rows >= 0).all()
    if model.item_index is None:
        return lookup_us, None
    probes = model.item_index.probes  # calibrated at training (ann.py)
    found = []
    for row in rows[:200].tolist():
        vector = model.user_factors[row]
        exact = np.argpartition(-(model.item_factors @ vector), 10)[:10]
        items, scores = model.item_index.candidates(vector, probes)
        approximate = items[np.argsort(-scores)[:10]]
        found.append(len(set(exact.tolist()) & set(approximate.tolist())) / 10)
    return lookup_us, {
        "clusters": model.item_index.n_clusters,
        "probes": probes,
        "recall_at_10": round(float(np.mean(found)), 3),
    }


def folder_size(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.iterdir() if entry.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-url", default=DEFAULT_PG, help="PostgreSQL server to use")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--learners", type=int, default=10_000, help="learners asked per worker")
    parser.add_argument(
        "--topics",
        type=int,
        default=1000,
        help="draw the factors around this many topic centres (0: unstructured random factors)",
    )
    parser.add_argument("--write-readme", action="store_true", help="put the figures in README")
    args = parser.parse_args()

    with throwaway_database(args.server_url) as url, tempfile.TemporaryDirectory() as tmp:
        models_dir = Path(tmp) / "models"
        models_dir.mkdir()
        with server(url, models_dir, args.workers, model=False) as idle:
            for pid in idle.worker_pids():
                connection_to(idle, pid).close()
            idle_memory = {pid: memory(pid) for pid in idle.worker_pids()}
        print(f"idle workers: {idle_memory}", flush=True)

        print("generating the model ...", flush=True)
        started = time.perf_counter()
        cutoff = asyncio.run(snapshot_cutoff(url))
        path = generated_model(
            args.users, args.items, args.factors, models_dir, cutoff, topics=args.topics
        )
        generated_s = time.perf_counter() - started
        size = folder_size(path)
        time.sleep(2.5)  # files settle before their verification is recorded (artifact.py)
        started = time.perf_counter()
        artifact.verify(path)
        first_verify_s = time.perf_counter() - started
        lookup_us, recall = lookups_and_recall(path, args.users)
        asyncio.run(register(url, path, args.users, args.items, 0))
        print(f"model: {size / MB:,.0f} MB on disk, generated in {generated_s:.0f} s", flush=True)

        with server(url, models_dir, args.workers, model=True) as running:
            load_s = running.load_seconds()
            pids = running.worker_pids()
            p50: dict[int, float] = {}
            for pid in pids:
                connection = connection_to(running, pid)
                timings = sweep(connection, args.users, args.learners)
                connection.close()
                p50[pid] = statistics.median(timings)
                print(f"worker {pid}: p50 {p50[pid]:.2f} ms", flush=True)
            loaded_memory = {pid: memory(pid) for pid in pids}

    idle_uss = max(m["uss_mb"] for m in idle_memory.values())
    idle_pss = statistics.mean(m["pss_mb"] for m in idle_memory.values())
    pss_sum = sum(m["pss_mb"] for m in loaded_memory.values())
    pss_bound = args.workers * idle_pss + size / MB + 200
    result: dict[str, Any] = {
        "model": {
            "users": args.users,
            "items": args.items,
            "factors": args.factors,
            "topics": args.topics,
        },
        "workers": args.workers,
        "artifact_mb": round(size / MB, 1),
        "first_verify_s": round(first_verify_s, 2),
        "load_s": {str(pid): load_s.get(pid) for pid in pids},
        "idle": {str(pid): m for pid, m in idle_memory.items()},
        "loaded": {str(pid): m for pid, m in loaded_memory.items()},
        "recommendations_p50_ms": {str(pid): round(v, 2) for pid, v in p50.items()},
        "id_lookup_us": round(lookup_us, 2),
        "ann": recall,
        "learners_per_worker": args.learners,
        "uss_over_idle_mb": round(max(m["uss_mb"] for m in loaded_memory.values()) - idle_uss, 1),
        "pss_sum_mb": round(pss_sum, 1),
        "pss_bound_mb": round(pss_bound, 1),
    }
    print(json.dumps(result, indent=1))
    if args.write_readme:
        write_readme_section(_section(args.users), _table(result, args))


def _section(users: int) -> str:
    return "memory-10m" if users >= 10_000_000 else "memory-1m"


def _table(result: dict[str, Any], args: argparse.Namespace) -> str:
    rows = [
        "| worker | load s | idle USS MB | USS MB | PSS MB | RSS MB | recommendations p50 ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    idle = list(result["idle"].values())
    for k, (pid, loaded) in enumerate(result["loaded"].items()):
        idle_uss = idle[k]["uss_mb"] if k < len(idle) else float("nan")
        rows.append(
            f"| {k + 1} | {result['load_s'][pid]:.2f} | {idle_uss:,.0f} | "
            f"{loaded['uss_mb']:,.0f} | {loaded['pss_mb']:,.0f} | {loaded['rss_mb']:,.0f} | "
            f"{result['recommendations_p50_ms'][pid]:.2f} |"
        )
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    users, items, factors = (result["model"][k] for k in ("users", "items", "factors"))
    ann = ""
    if result["ann"] is not None:
        ann = (
            f" Personal lists come from the item index (ann.py): {result['ann']['probes']} of "
            f"{result['ann']['clusters']:,} clusters scored, recall@10 against exact scoring "
            f"{result['ann']['recall_at_10']:.3f} (factors drawn around "
            f"{result['model']['topics']:,} topics)."
        )
    command = "python bench/memory.py"
    if (users, items, factors, args.workers) != (1_000_000, 100_000, 64, 4):
        command += f" --users {users} --items {items} --factors {factors} --workers {args.workers}"
    return (
        f"`{command} --write-readme` ({machine}, {datetime.now(UTC):%Y-%m-%d}): "
        f"{users:,} learners × {items:,} courses × {factors} factors, "
        f"artifact {result['artifact_mb']:,.0f} MB on disk, `--workers {args.workers}`, each "
        f"worker asked for {result['learners_per_worker']:,} learners spread over the whole "
        f"range, one request at a time.\n\n" + "\n".join(rows) + "\n\n"
        f"Private memory (USS) above an idle worker: at most {result['uss_over_idle_mb']:,.0f} "
        f"MB. PSS summed over the workers: {result['pss_sum_mb']:,.0f} MB (bound: "
        f"{args.workers} idle workers + the artifact + 200 MB = {result['pss_bound_mb']:,.0f} "
        f"MB). First load on the machine (checksums of every file): "
        f"{result['first_verify_s']:.2f} s; the workers' loads after it only map the files. "
        f"A learner id lookup in the mapped vocabulary: {result['id_lookup_us']:.1f} µs.{ann}\n"
    )


if __name__ == "__main__":
    main()
