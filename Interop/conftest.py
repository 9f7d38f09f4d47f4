"""Shared fixtures for the Switchboard <-> rust-nostr interop tests.

The `switchboard` binary is taken from $SWITCHBOARD_BIN (default:
/work/main/.build/debug/switchboard). A missing or non-working binary is a
test FAILURE, never a skip: an interop suite that silently skips proves
nothing.

Randomness: every test draws from its own `random.Random` seeded with
"<INTEROP_SEED>:<test name>", so a single test can be re-run in isolation and
see the same inputs. The seed is printed in the pytest header and included in
every assertion message. Override with INTEROP_SEED=<int>.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional, Sequence

import pytest

DEFAULT_BIN = "/work/main/.build/debug/switchboard"
SEED = int(os.environ.get("INTEROP_SEED", "20240521"))
WORKERS = int(os.environ.get("INTEROP_WORKERS", "4"))
PROCESS_TIMEOUT = float(os.environ.get("INTEROP_PROCESS_TIMEOUT", "120"))


def switchboard_path() -> str:
    return os.environ.get("SWITCHBOARD_BIN", DEFAULT_BIN)


def pytest_report_header(config):
    return [
        f"interop seed: INTEROP_SEED={SEED} (re-run with this env var to reproduce)",
        f"switchboard binary: {switchboard_path()}",
    ]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    # Also shown under -q, where the header above is suppressed.
    terminalreporter.write_line(
        f"interop seed: INTEROP_SEED={SEED}; switchboard binary: {switchboard_path()}")


def _clip(value, limit: int = 600) -> str:
    text = repr(value)
    if len(text) > limit:
        text = text[: limit // 2] + f" ...<{len(text) - limit} chars>... " + text[-limit // 2 :]
    return text


@dataclass
class Result:
    args: Sequence[str]
    stdin: bytes
    returncode: Optional[int]  # None when the process timed out
    stdout: bytes
    stderr: bytes

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    @property
    def signalled(self) -> bool:
        return self.returncode is not None and self.returncode < 0

    def describe(self) -> str:
        if self.timed_out:
            status = f"TIMED OUT after {PROCESS_TIMEOUT}s"
        elif self.signalled:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = "?"
            status = f"killed by signal {-self.returncode} ({name})"
        else:
            status = f"exit {self.returncode}"
        return (
            f"[seed {SEED}] switchboard {_clip(list(self.args[1:]), 400)}\n"
            f"  {status}\n"
            f"  stdin : {_clip(self.stdin)}\n"
            f"  stdout: {_clip(self.stdout)}\n"
            f"  stderr: {_clip(self.stderr)}"
        )


class Switchboard:
    """Runs the switchboard CLI; `run_many` fans out over a thread pool."""

    def __init__(self, path: str, pool: ThreadPoolExecutor):
        self.path = path
        self._pool = pool

    def run(self, args: Sequence[str], stdin: bytes = b"") -> Result:
        argv = [self.path, *args]
        try:
            proc = subprocess.run(
                argv,
                input=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                timeout=PROCESS_TIMEOUT,
            )
        except subprocess.TimeoutExpired as exc:
            return Result(argv, stdin, None, exc.stdout or b"", exc.stderr or b"")
        return Result(argv, stdin, proc.returncode, proc.stdout, proc.stderr)

    def run_many(self, jobs: Sequence[tuple]) -> list:
        """jobs: sequence of (args, stdin_bytes). Results come back in order."""
        return list(self._pool.map(lambda job: self.run(job[0], job[1]), jobs))


@pytest.fixture(scope="session")
def seed() -> int:
    return SEED


@pytest.fixture
def rng(request) -> random.Random:
    # str seeds are hashed deterministically (sha512) by random.Random.
    return random.Random(f"{SEED}:{request.node.name}")


@pytest.fixture(scope="session")
def switchboard():
    path = switchboard_path()
    if not os.path.isfile(path):
        pytest.fail(
            f"switchboard binary not found at {path!r}. Build it (swift build) or point "
            f"SWITCHBOARD_BIN at it. Interop tests refuse to skip.",
            pytrace=False,
        )
    if not os.access(path, os.X_OK):
        pytest.fail(f"switchboard binary at {path!r} is not executable", pytrace=False)
    try:
        probe = subprocess.run(
            [path, "event", "verify", "--help"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"cannot run {path!r} event verify --help: {exc}", pytrace=False)
    text = (probe.stdout + probe.stderr).decode("utf-8", "replace")
    if probe.returncode != 0 or "usage" not in text.lower() or "verify" not in text.lower():
        pytest.fail(
            f"{path!r} does not look like the switchboard CLI: `event verify --help` gave "
            f"exit {probe.returncode} and output {text[:300]!r} (expected a usage text "
            f"mentioning 'verify')",
            pytrace=False,
        )
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        yield Switchboard(path, pool)


def terminate(proc: subprocess.Popen, timeout: float) -> tuple:
    """SIGTERM, wait up to `timeout`, then SIGKILL. Returns (was_alive_before, exited_on_sigterm)."""
    was_alive = proc.poll() is None
    exited = True
    if was_alive:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            exited = False
            proc.kill()
            proc.wait(timeout)
    return was_alive, exited

