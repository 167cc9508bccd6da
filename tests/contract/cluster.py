"""Throwaway Redis servers for limiter tests: a 3-master Cluster, or one private standalone.

Started from /usr/bin/redis-server on free loopback ports in a temp dir, and stopped (and the
dir removed) on exit. The Cluster is formed with `redis-cli --cluster create` when redis-cli
exists, else by hand (CLUSTER ADDSLOTSRANGE + CLUSTER MEET), and is ready when every node
reports `cluster_state:ok`. A private standalone server lets a test run `SCRIPT FLUSH`
without disturbing anyone else's Redis; a `RestartableRedis` can also be stopped, frozen and
started again on the same port, for outage tests.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import redis as redis_sync

from tests.services import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
SLOTS = 16384


@dataclass(frozen=True)
class ClusterNodes:
    host: str
    ports: tuple[int, ...]

    @property
    def url(self) -> str:
        """A startup URL (one node; the client discovers the rest)."""
        return f"redis://{self.host}:{self.ports[0]}"


def _cluster_port() -> int:
    # The cluster bus listens on port + 10000, so that one must be free as well.
    for _ in range(100):
        port = free_port()
        if port + 10000 <= 65535 and free_port_is(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def free_port_is(port: int) -> bool:
    """Whether nobody listens on `port` of 127.0.0.1."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with suppress(redis_sync.RedisError, OSError):
            if predicate():  # type: ignore[operator]
                return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


@contextmanager
def _server(workdir: Path, port: int, **options: str) -> Iterator[subprocess.Popen]:
    """One redis-server process on 127.0.0.1:port (yielded), stopped on exit."""
    settings = {
        "port": str(port),
        "bind": "127.0.0.1",
        "dir": str(workdir),
        "save": "",
        "appendonly": "no",
        "logfile": str(workdir / f"redis-{port}.log"),
        **options,
    }
    argv = [REDIS_SERVER]
    for name, value in settings.items():
        argv += [f"--{name.replace('_', '-')}", value]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis_sync.Redis(host="127.0.0.1", port=port, socket_timeout=1)
        try:
            _wait(client.ping, 10, f"redis-server on :{port}")
        finally:
            client.close()
        yield proc
    finally:
        proc.send_signal(signal.SIGCONT)  # a frozen server could not act on SIGTERM
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def standalone_redis() -> Iterator[str]:
    """A private redis-server; yields its URL."""
    workdir = Path(tempfile.mkdtemp(prefix="gw-redis-solo-"))
    port = free_port()
    try:
        with _server(workdir, port):
            yield f"redis://127.0.0.1:{port}/0"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class RestartableRedis:
    """A private redis-server that a test stops, freezes and starts again on one port.

    Started again, it is empty, like a real restart without persistence: keys and the script
    cache are gone.
    """

    def __init__(self, workdir: Path, port: int) -> None:
        self.port = port
        self._workdir = workdir
        self._running: ExitStack | None = None
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._running is not None

    def start(self) -> None:
        """Start the server (empty) and return once it answers PING."""
        if self._running is not None:
            raise RuntimeError("already running")
        stack = ExitStack()
        self._proc = stack.enter_context(_server(self._workdir, self.port))
        self._running = stack

    def stop(self) -> None:
        """SIGTERM the server and return once the process is gone."""
        if self._running is not None:
            running, self._running, self._proc = self._running, None, None
            running.close()

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """SIGSTOP the server for the block: it accepts connections but never answers."""
        proc = self._proc
        if proc is None:
            raise RuntimeError("not running")
        proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            proc.send_signal(signal.SIGCONT)

    def client(self, timeout_s: float = 2.0) -> redis_sync.Redis:
        """A new synchronous client of this server."""
        return redis_sync.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout_s)


@contextmanager
def restartable_redis() -> Iterator[RestartableRedis]:
    """A running `RestartableRedis`, stopped and its dir removed on exit."""
    workdir = Path(tempfile.mkdtemp(prefix="gw-redis-restartable-"))
    server = RestartableRedis(workdir, free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _form_by_hand(ports: tuple[int, ...]) -> None:
    clients = [redis_sync.Redis(host="127.0.0.1", port=p, socket_timeout=2) for p in ports]
    try:
        share = SLOTS // len(ports)
        for index, client in enumerate(clients):
            last = SLOTS - 1 if index == len(ports) - 1 else (index + 1) * share - 1
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", index * share, last)
        for client in clients[1:]:
            client.execute_command("CLUSTER", "MEET", "127.0.0.1", ports[0])
    finally:
        for client in clients:
            client.close()


@contextmanager
def redis_cluster(masters: int = 3) -> Iterator[ClusterNodes]:
    """A fresh Redis Cluster of `masters` primaries and no replicas."""
    workdir = Path(tempfile.mkdtemp(prefix="gw-redis-cluster-"))
    ports = tuple(_cluster_port() for _ in range(masters))
    try:
        with ExitStack() as stack:
            for port in ports:
                stack.enter_context(
                    _server(
                        workdir,
                        port,
                        cluster_enabled="yes",
                        cluster_config_file=f"nodes-{port}.conf",
                        cluster_node_timeout="2000",
                    )
                )
            redis_cli = shutil.which("redis-cli")
            if redis_cli:
                nodes = [f"127.0.0.1:{port}" for port in ports]
                flags = ["--cluster-replicas", "0", "--cluster-yes"]
                subprocess.run(
                    [redis_cli, "--cluster", "create", *nodes, *flags],
                    check=True,
                    capture_output=True,
                    timeout=30,
                )
            else:
                _form_by_hand(ports)
            for port in ports:
                client = redis_sync.Redis(host="127.0.0.1", port=port, socket_timeout=1)
                try:
                    _wait(
                        lambda c=client: c.cluster("info")["cluster_state"] == "ok",
                        20,
                        f"cluster_state:ok on :{port}",
                    )
                finally:
                    client.close()
            yield ClusterNodes("127.0.0.1", ports)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
