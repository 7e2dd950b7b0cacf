"""Helpers of the crash tests: a `recsvc serve` process that can be SIGKILLed and started again
on the same port, producers that retry every unacknowledged batch, and a throw-away PostgreSQL
cluster of the test's own."""

from __future__ import annotations

import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

KEY = "k-crash-test-key"
HEADERS = {"X-API-Key": KEY}
READY_TIMEOUT = 90.0


class Server:
    """`python -m recsvc serve` in its own session (process group), so a SIGKILL of the group
    leaves no orphaned worker. `start` can be called again after `kill`: same port."""

    def __init__(self, database_url: str, tmp: Path, port: int, workers: int = 1) -> None:
        self.database_url = database_url
        self.tmp = tmp
        self.port = port
        self.workers = workers
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0
        self.log = tmp / f"serve-{port}.log"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RECSVC_", "PROMETHEUS_"))}
        scratch = self.tmp / "scratch"  # metrics folders a killed server cannot remove land here
        scratch.mkdir(exist_ok=True)
        env |= {
            "RECSVC_DATABASE_URL": self.database_url,
            "RECSVC_API_KEYS": json.dumps({KEY: ["admin", "read", "ingest"]}),
            "RECSVC_MODELS_DIR": str(self.tmp / "models"),
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "TMPDIR": str(scratch),
        }
        return env

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        command = [sys.executable, "-m", "recsvc", "serve", "--port", str(self.port)]
        command += ["--workers", str(self.workers), "--log-level", "warning"]
        with self.log.open("ab") as err:
            self.process = subprocess.Popen(  # noqa: S603
                command,
                env=self._env(),
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        self.starts += 1

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> float:
        """Poll /readyz until it answers 200; returns the seconds it took."""
        assert self.process is not None
        began = time.monotonic()
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - began
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"recsvc serve exited:\n{self.log.read_text()[-3000:]}")
            if time.monotonic() - began > timeout:
                raise RuntimeError(f"recsvc serve not ready:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the whole process group (supervisor and workers) and reap it."""
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(10)
        self.kills += 1

    def stop(self) -> None:
        """Graceful stop (SIGTERM to the group), SIGKILL if it takes too long."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        except ProcessLookupError:
            self.process.wait(10)


@dataclass
class Producer:
    """Streams batches of events with ids `p{index}-{seq}`; a batch that is not acknowledged
    (connection error, timeout, 5xx) is sent again, with the same ids, until it is. Stops after
    the batch in hand once `stop` is set."""

    index: int
    url: str
    stop: threading.Event
    seed: int
    sent: set[str] = field(default_factory=set)
    acknowledged: set[str] = field(default_factory=set)
    acknowledged_at: list[tuple[float, int]] = field(default_factory=list)
    attempts: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    error: BaseException | None = None
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name=f"producer-{self.index}")
        self.thread.start()

    def join(self, timeout: float) -> None:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"producer {self.index} did not finish"

    def _run(self) -> None:
        try:
            self._produce()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _produce(self) -> None:
        rng = random.Random(self.seed)
        seq = 0
        give_up = None
        with httpx.Client(base_url=self.url, headers=HEADERS, timeout=15) as client:
            while not self.stop.is_set():
                size = rng.randint(20, 50)
                ids = [f"p{self.index}-{seq + i}" for i in range(size)]
                seq += size
                body = {
                    "events": [
                        {
                            "event_id": event_id,
                            "user_id": f"u{rng.randrange(200)}",
                            "item_id": f"i{rng.randrange(500)}",
                            "type": "view",
                        }
                        for event_id in ids
                    ]
                }
                self.sent.update(ids)
                while True:  # until acknowledged
                    self.attempts += 1
                    try:
                        response = client.post("/v1/events", json=body)
                    except httpx.HTTPError as exc:
                        self._failed(type(exc).__name__)
                        give_up = self._check_give_up(give_up)
                        time.sleep(0.2 if isinstance(exc, httpx.ConnectError) else 0.05)
                        continue
                    if response.status_code == 202:
                        answer = response.json()
                        if answer["accepted"] + answer["duplicates"] != size:
                            self.unexpected.append(f"{ids[0]}: {answer}")
                        self.acknowledged.update(ids)
                        self.acknowledged_at.append((time.monotonic(), size))
                        give_up = None
                        break
                    if response.status_code >= 500:
                        self._failed(str(response.status_code))
                        give_up = self._check_give_up(give_up)
                        time.sleep(0.1)
                        continue
                    raise AssertionError(f"{response.status_code}: {response.text[:500]}")

    def _failed(self, kind: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1

    @staticmethod
    def _check_give_up(since: float | None) -> float:
        now = time.monotonic()
        if since is not None and now - since > 120:
            raise RuntimeError("a batch was not acknowledged for 120 s")
        return since if since is not None else now


def start_producers(url: str, count: int, seed: int) -> tuple[list[Producer], threading.Event]:
    stop = threading.Event()
    producers = [Producer(i, url, stop, seed * 1000 + i) for i in range(count)]
    for producer in producers:
        producer.start()
    return producers, stop


def finish_producers(producers: list[Producer], stop: threading.Event) -> None:
    stop.set()
    for producer in producers:
        producer.join(150)
    for producer in producers:
        if producer.error is not None:
            raise AssertionError(f"producer {producer.index} failed") from producer.error


def failed_attempts(producers: list[Producer]) -> dict[str, int]:
    """Attempts that were not acknowledged, by kind, over all producers."""
    failures: dict[str, int] = {}
    for producer in producers:
        for kind, n in producer.failures.items():
            failures[kind] = failures.get(kind, 0) + n
    return failures


def postgres_bin() -> Path | None:
    """The newest /usr/lib/postgresql/*/bin holding initdb and pg_ctl, if any."""
    found = [
        Path(d)
        for d in glob.glob("/usr/lib/postgresql/*/bin")
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists()
    ]
    return max(found, key=lambda d: int(d.parent.name)) if found else None


class Cluster:
    """A throw-away PostgreSQL cluster in a temporary folder, run as the `postgres` user when
    this process is root (initdb and pg_ctl refuse root)."""

    def __init__(self, bindir: Path, port: int) -> None:
        self.bindir = bindir
        self.port = port
        self.base = Path(tempfile.mkdtemp(prefix="recsvc-pg-", dir="/tmp"))  # short socket path
        self.data = self.base / "data"
        self.logfile = self.base / "log"
        if os.geteuid() == 0:
            import pwd

            user = pwd.getpwnam("postgres")
            os.chown(self.base, user.pw_uid, user.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        else:
            self.prefix = []

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60) -> None:
        result = subprocess.run(  # noqa: S603
            [*self.prefix, *args], capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            log = self.logfile.read_text()[-3000:] if self.logfile.exists() else ""
            raise RuntimeError(f"{args}: {result.stdout}{result.stderr}\n{log}")

    def init(self) -> None:
        initdb = str(self.bindir / "initdb")
        self._run(initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1"
        pg_ctl = str(self.bindir / "pg_ctl")
        self._run(
            pg_ctl, "-D", str(self.data), "-o", options, "-w", "-l", str(self.logfile), "start"
        )

    def crash(self) -> None:
        """Stop without a shutdown checkpoint (as a crash): recovery replays the WAL."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")

    def createdb(self, name: str) -> None:
        createdb = str(self.bindir / "createdb")
        self._run(createdb, "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self.crash()
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.base, ignore_errors=True)


@contextmanager
def cluster(bindir: Path, port: int) -> Iterator[Cluster]:
    made = Cluster(bindir, port)
    try:
        made.init()
        made.start()
        yield made
    finally:
        made.destroy()
