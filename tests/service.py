"""Helpers for the service tests: real `minyin serve` / `minyin worker` subprocesses on
loopback, a private redis-server for the tests that stop Redis, API keys made with the
CLI, and polling."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
MINYIN = [sys.executable, "-m", "api.cli"]
SHARED_REDIS = os.environ.get("MINYIN_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.1,
               what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def service_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINYIN_")}
    env.update({
        "MINYIN_DATA_DIR": str(data_dir),
        "MINYIN_MODELS_DIR": str(ROOT / "models"),
        "MINYIN_CPU_THREADS": "2",
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        # tests poll job status 5 times a second; the 429 test sets its own upload limit
        "MINYIN_RATE_LIMIT": "100000/minute",
    })
    env.update(extra)
    return env


def make_key(env: dict[str, str], role: str, name: str | None = None) -> str:
    out = subprocess.run([*MINYIN, "keys", "create", "--role", role, "--name",
                          name or f"{role}-{uuid.uuid4().hex[:6]}"],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip()
    assert key.startswith("mny_"), out
    return key


class Proc:
    """A child process with its output in a log file (shown when a test fails)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._fh = log.open("ab")
        self.popen = subprocess.Popen(args, env=env, cwd=ROOT, stdout=self._fh,
                                      stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (a Celery worker and its pool)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=20)

    def stop(self) -> None:
        if self.alive():
            self.kill(signal.SIGTERM)
        if self.alive():
            self.kill(signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)  # orphans of the group
        self._fh.close()

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class Api:
    """`minyin serve` on a free loopback port, and an HTTP client for it."""

    def __init__(self, env: dict[str, str], log: Path, *, wait_ready: bool = True) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.proc = Proc([*MINYIN, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                         env, log)
        self.http = httpx.Client(base_url=self.url, timeout=30)
        try:
            wait_until(self._healthy, 60, 0.2, "minyin serve to answer /healthz")
            if wait_ready:
                wait_until(self.ready, 120, 0.2, "minyin serve to be ready")
        except AssertionError:
            raise AssertionError(f"server did not start:\n{self.proc.tail()}") from None

    def _healthy(self) -> bool:
        if not self.proc.alive():
            raise AssertionError(f"minyin serve exited:\n{self.proc.tail()}")
        try:
            return self.http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def ready(self) -> bool:
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    @staticmethod
    def auth(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def upload(self, key: str, path: Path, **form: Any) -> httpx.Response:
        with path.open("rb") as fh:
            return self.http.post("/v1/voice-notes", headers=self.auth(key),
                                  files={"audio": (path.name, fh)},
                                  data={k: str(v) for k, v in form.items()})

    def job(self, key: str, job_id: str) -> dict[str, Any]:
        r = self.http.get(f"/v1/jobs/{job_id}", headers=self.auth(key))
        assert r.status_code == 200, r.text
        return r.json()

    def wait_job(self, key: str, job_id: str, timeout: float = 180) -> dict[str, Any]:
        def over() -> dict[str, Any] | None:
            job = self.job(key, job_id)
            return job if job["status"] in ("done", "failed") else None

        try:
            return wait_until(over, timeout, 0.2, f"job {job_id}")
        except AssertionError:
            raise AssertionError(f"job {job_id} did not end:\n{self.proc.tail()}") from None

    def close(self) -> None:
        self.http.close()
        self.proc.stop()


class PrivateRedis:
    """A redis-server of our own on a free port, so a test may stop and restart it
    without touching the shared one (other test runs and CI use it)."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed")
        self.exe = exe
        self.port = free_port()
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_until(up, 20, 0.05, "redis-server to start")
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


@contextlib.contextmanager
def services(*procs: Any) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            with contextlib.suppress(Exception):
                (p.close if hasattr(p, "close") else p.stop)()
