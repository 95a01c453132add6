"""A throwaway Redis Cluster of three masters (no replicas) on loopback ports, for tests and benchmarks.

Started from the installed `redis-server`: three nodes with `cluster-enabled`,
each given a third of the 16384 slots (`CLUSTER ADDSLOTSRANGE`) and introduced to
the first (`CLUSTER MEET`); ready once every node reports `cluster_state:ok` and
knows all three masters. That takes well under a second, where
`redis-cli --cluster create` waits in one-second steps for the nodes to agree.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis.crc import key_slot

from tests.support.processes import free_port, terminate

_SLOTS = 16384
_READY_TIMEOUT = 15.0
_STOP_TIMEOUT = 5.0
# Ports are chosen free, then bound by redis-server a moment later: another process may take
# one in between. A node that could not bind is started again on other ports, a few times.
_PORT_ATTEMPTS = 5


@dataclass
class _Node:
    port: int
    bus_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None


class ThrowawayCluster:
    """`with ThrowawayCluster() as cluster:` three masters; `cluster.url` names the first node."""

    def __init__(self, masters: int = 3) -> None:
        if masters < 3:
            raise ValueError("a Redis Cluster needs at least three masters")
        self._masters = masters
        self._root: Path | None = None
        self._nodes: list[_Node] = []
        self._moved: dict[int, int] = {}  # slot -> port, for slots moved from their first owner

    @property
    def ports(self) -> list[int]:
        """The client ports of the masters, in slot order (the first holds slot 0)."""
        return [node.port for node in self._nodes]

    def port_of(self, key: str) -> int:
        """The port of the master owning `key`'s slot (also a channel's, for sharded pub/sub)."""
        slot = key_slot(key.encode())
        share = _SLOTS // len(self._nodes)
        return self._moved.get(slot, self._nodes[min(slot // share, len(self._nodes) - 1)].port)

    def move_slot(self, key: str, port: int) -> None:
        """Gives the (empty) slot of `key` to the master on `port`, as a resharding does, and tells every node."""
        slot = key_slot(key.encode())
        clients = {node.port: redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=2) for node in self._nodes}
        try:
            if int(_command(clients[self.port_of(key)], "CLUSTER", "COUNTKEYSINSLOT", slot)):
                raise RuntimeError(f"slot {slot} holds keys: only an empty slot is moved without MIGRATE")
            target = _command(clients[port], "CLUSTER", "MYID")
            # The new owner first, then the old one (which drops its sharded subscribers), then the rest.
            for node_port in sorted(clients, key=lambda p: (p != port, p != self.port_of(key))):
                _command(clients[node_port], "CLUSTER", "SETSLOT", slot, "NODE", target)
        finally:
            for client in clients.values():
                client.close()
        self._moved[slot] = port

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:PORT/0` of the first node (a cluster client discovers the others)."""
        if not self._nodes:
            raise RuntimeError("the cluster has not been started")
        return f"redis://127.0.0.1:{self._nodes[0].port}/0"

    def start(self) -> None:
        """Starts the nodes, assigns the slots, joins them and waits for `cluster_state:ok`."""
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError("redis-server is not installed (not found on PATH): `apt-get install redis-server`")
        self._root = Path(tempfile.mkdtemp(prefix="parley-redis-cluster-"))
        try:
            for index in range(self._masters):
                directory = self._root / str(index)
                directory.mkdir()
                self._nodes.append(self._started_node(executable, directory))
            self._form()
        except BaseException:
            self.close()
            raise

    def _started_node(self, executable: str, directory: Path) -> _Node:
        """A node answering PING, on ports of its own (chosen again when taken meanwhile)."""
        for _ in range(_PORT_ATTEMPTS):
            # The cluster bus port is chosen too: the default (port + 10000) may be taken or past 65535.
            node = _Node(port=free_port(), bus_port=free_port(), directory=directory)
            self._launch(executable, node)
            assert node.process is not None
            client = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=2)
            try:
                deadline = time.monotonic() + _READY_TIMEOUT
                while not _answers_now(client):
                    if node.process.poll() is not None:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"node {node.port} did not answer PING:\n{self._log_tail(node)}")
                    time.sleep(0.02)
                else:
                    return node
            finally:
                client.close()
            log = self._log_tail(node)
            if "Address already in use" not in log:
                raise RuntimeError(f"redis-server on port {node.port} exited:\n{log}")
            (directory / "redis.log").unlink(missing_ok=True)
            (directory / "nodes.conf").unlink(missing_ok=True)
        raise RuntimeError(f"redis-server found no free ports in {_PORT_ATTEMPTS} attempts")

    @staticmethod
    def _launch(executable: str, node: _Node) -> None:
        # nodes.conf in the node's directory keeps its identity and slots across a restart.
        node.process = subprocess.Popen(
            [
                executable,
                "--port", str(node.port),
                "--cluster-port", str(node.bus_port),
                "--bind", "127.0.0.1",
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(node.directory / "nodes.conf"),
                "--cluster-node-timeout", "5000",
                "--dir", str(node.directory),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--logfile", str(node.directory / "redis.log"),
                "--loglevel", "warning",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def _form(self) -> None:
        clients = [redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=2) for node in self._nodes]
        try:
            deadline = time.monotonic() + _READY_TIMEOUT
            for client, node in zip(clients, self._nodes, strict=True):
                self._wait(deadline, partial(_answers, client), f"node {node.port} did not answer PING")
            share = _SLOTS // len(self._nodes)
            for index, client in enumerate(clients):
                first = index * share
                last = _SLOTS - 1 if index == len(clients) - 1 else first + share - 1
                _command(client, "CLUSTER", "ADDSLOTSRANGE", first, last)
            for node in self._nodes[1:]:
                _command(clients[0], "CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)
            for client, node in zip(clients, self._nodes, strict=True):
                formed = partial(_formed, client, len(self._nodes))
                self._wait(deadline, formed, f"node {node.port} did not reach cluster_state:ok")
        finally:
            for client in clients:
                client.close()

    def _wait(self, deadline: float, ready: Callable[[], bool], failure: str) -> None:
        while True:
            try:
                if ready():
                    return
            except (redis.RedisError, OSError):
                pass
            for node in self._nodes:
                if node.process is not None and node.process.poll() is not None:
                    raise RuntimeError(f"redis-server on port {node.port} exited:\n{self._log_tail(node)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{failure}:\n{self._log_tail(self._nodes[0])}")
            time.sleep(0.02)

    @staticmethod
    def _log_tail(node: _Node) -> str:
        log = node.directory / "redis.log"
        return log.read_text(errors="replace")[-2000:] if log.exists() else ""

    def restart(self, port: int) -> None:
        """Stops the master on `port` and starts it again with its slots; returns once the cluster is whole again."""
        executable = shutil.which("redis-server")
        node = next((n for n in self._nodes if n.port == port), None)
        if node is None or executable is None:
            raise RuntimeError(f"no node of this cluster listens on port {port}")
        process, node.process = node.process, None
        terminate(process, timeout=_STOP_TIMEOUT)
        self._launch(executable, node)
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
        try:
            deadline = time.monotonic() + _READY_TIMEOUT
            self._wait(deadline, partial(_formed, client, len(self._nodes)), f"node {port} did not rejoin the cluster")
        finally:
            client.close()

    def close(self) -> None:
        """Stops every node and removes their directories."""
        for node in self._nodes:
            process, node.process = node.process, None
            terminate(process, timeout=_STOP_TIMEOUT)
        self._nodes = []
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def __enter__(self) -> ThrowawayCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _command(client: redis.Redis, *args: Any) -> Any:
    """One raw command (redis-py leaves `execute_command` untyped)."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _answers(client: redis.Redis) -> bool:
    return bool(client.ping())


def _answers_now(client: redis.Redis) -> bool:
    """Whether the node answers PING (False while it is not listening yet)."""
    try:
        return _answers(client)
    except (redis.RedisError, OSError):
        return False


def _formed(client: redis.Redis, nodes: int) -> bool:
    """This node sees the cluster whole: every slot served and every node known."""
    info = _command(client, "CLUSTER", "INFO")
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text and f"cluster_known_nodes:{nodes}" in text
