"""gunicorn's workers share out a burst of new connections (integrator.gunicorn_worker): a real
gunicorn with two workers, connections opened all at once, and which worker holds each read from
/proc (the server side's socket inode, then the process that has it open)."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ops.conftest import gunicorn_start, http_get, hub_env

GENEROUS = 60.0
CONNECTIONS = 16

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc")


@pytest.fixture
def two_workers(python) -> Iterator[tuple[int, list[int]]]:
    server, port = gunicorn_start(python, hub_env(LOG_LEVEL="WARNING"), "--workers=2")
    try:
        http_get(f"http://127.0.0.1:{port}/healthz", time.monotonic() + GENEROUS)
        deadline = time.monotonic() + GENEROUS
        while len(workers := _children(server.pid)) < 2 or not all(_listening(pid, port) for pid in workers):
            assert time.monotonic() < deadline, "gunicorn's two workers never both listened"
            time.sleep(0.1)
        yield port, workers
    finally:
        for pid in _children(server.pid):
            os.kill(pid, signal.SIGCONT)
        server.terminate()
        _, err = server.communicate(timeout=30)
        assert server.returncode == 0, err.decode()[-2000:]


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _tcp(port: int) -> list[tuple[int, str, int]]:
    """The sockets of the server's port, from /proc/net/tcp: (the peer's port, state, inode)."""
    rows = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port:
            rows.append((int(fields[2].split(":")[1], 16), fields[3], int(fields[9])))
    return rows


def _fds(pid: int) -> dict[str, str]:
    """A process's open descriptors: number -> what it points at (`socket:[inode]`...)."""
    fds = {}
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            fds[fd.name] = os.readlink(fd)
        except OSError:
            continue
    return fds


def _listening(pid: int, port: int) -> bool:
    """Whether the worker waits on the port's listening socket: its epoll watches that socket's fd
    (a worker still loading the application does not yet)."""
    listener = next(inode for _, state, inode in _tcp(port) if state == "0A")  # LISTEN
    fds = _fds(pid)
    listener_fds = {name for name, target in fds.items() if target == f"socket:[{listener}]"}
    for name, target in fds.items():
        if target == "anon_inode:[eventpoll]":
            watched = set(re.findall(r"tfd:\s*(\d+)\s", Path(f"/proc/{pid}/fdinfo/{name}").read_text()))
            if watched & listener_fds:
                return True
    return False


def _holders(port: int, clients: list[socket.socket], workers: list[int]) -> Counter:
    """How many of the clients' connections each worker has accepted (None: not accepted yet)."""
    by_inode = {
        int(target[8:-1]): pid for pid in workers for target in _fds(pid).values() if target.startswith("socket:[")
    }
    # The accepted sockets: the client's port -> the server side's inode.
    inodes = {peer: inode for peer, state, inode in _tcp(port) if state == "01"}  # ESTABLISHED
    return Counter(by_inode.get(inodes.get(client.getsockname()[1], -1)) for client in clients)


def _burst(port: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=GENEROUS) for _ in range(CONNECTIONS)]


def _all_accepted(port: int, clients: list[socket.socket], workers: list[int]) -> Counter:
    deadline = time.monotonic() + GENEROUS
    while (held := _holders(port, clients, workers))[None]:
        assert time.monotonic() < deadline, f"connections never accepted: {held}"
        time.sleep(0.05)
    return held


def test_a_burst_of_connections_is_shared_out_between_the_workers(two_workers):
    port, workers = two_workers
    for _ in range(3):
        clients = _burst(port)
        try:
            held = _all_accepted(port, clients, workers)
            # Each holds a share: about half on an idle machine; on a loaded one a worker that is
            # not scheduled within BALANCE_WAIT_MAX_SECONDS leaves the rest of the burst to the other.
            assert set(held) == set(workers), held
            assert min(held.values()) >= CONNECTIONS // 4, held
        finally:
            for client in clients:
                client.close()
        time.sleep(0.5)  # the workers notice the closes


def test_a_stopped_worker_leaves_the_burst_to_the_other_at_once(two_workers):
    port, workers = two_workers
    stopped, running = workers
    os.kill(stopped, signal.SIGSTOP)
    clients = _burst(port)
    try:
        # The stopped one holds none, yet the other takes them all once they waited its bound.
        assert _all_accepted(port, clients, workers) == Counter({running: CONNECTIONS})
    finally:
        for client in clients:
            client.close()
        os.kill(stopped, signal.SIGCONT)
