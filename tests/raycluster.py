"""A Ray cluster of separate processes on this machine: a head node and worker nodes, each a
``ray start --block`` with its own temp dir and ports, for tests and the corpus benchmark.

The nodes share one authentication token (a file in the cluster's folder, never ~/.ray); give
``env`` to every process that connects (the driver). ``stop`` ends every process the nodes started.
Ray's gRPC servers listen on every interface whatever ``--node-ip-address`` says (Ray 2.60); the token
is what keeps others out.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

READY = "Ray runtime started"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ports() -> list[str]:
    names = (
        "--node-manager-port",
        "--object-manager-port",
        "--metrics-export-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port",
    )
    return [arg for name in names for arg in (name, str(free_port()))]


class LoopbackCluster:
    def __init__(self, cpus: tuple[int, ...] = (1, 1), pythonpath: Path | None = None) -> None:
        """``cpus``: one entry per node, the head first. The nodes' folders are under a short new folder
        in the system's temp dir (Ray's socket paths must fit in 107 bytes); ``stop`` removes it."""
        self.cpus = cpus
        self.root = Path(tempfile.mkdtemp(prefix="kiwi-ray-"))
        token = self.root / "token"
        token.write_text(secrets.token_hex(32), encoding="utf-8")
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        if pythonpath is not None:  # the nodes' workers import recommender from the checkout
            self.env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(pythonpath), os.environ.get("PYTHONPATH")])
            )
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[subprocess.Popen[bytes]] = []
        self._seen: dict[int, float] = {}  # pid -> start time (a pid reused later is not ours)

    def start(self, timeout: float = 120) -> float:
        """Start the nodes one after the other; returns the seconds it took."""
        began = time.monotonic()
        ray = str(Path(sys.executable).with_name("ray"))
        for k, cpus in enumerate(self.cpus):
            # the dashboard's own process still runs (on 8265 unless told): a free port too
            head = ["--head", "--port", str(self.port), "--include-dashboard", "false"]
            where = [*head, "--dashboard-port", str(free_port())] if k == 0 else []
            where += [] if k == 0 else ["--address", self.address]
            log = self.root / f"node{k}.log"
            args = [
                ray,
                "start",
                "--block",
                *where,
                "--node-ip-address",
                "127.0.0.1",
                "--num-cpus",
                str(cpus),
            ]
            args += ["--temp-dir", str(self.root / f"node{k}"), "--disable-usage-stats", *_ports()]
            with log.open("wb") as out:
                # its own process group: stop() ends it and nothing else
                node = subprocess.Popen(
                    args, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            self.nodes.append(node)
            self._wait(k, log, began + timeout)
        return time.monotonic() - began

    def _wait(self, k: int, log: Path, deadline: float) -> None:
        while READY not in log.read_text(errors="replace"):
            if self.nodes[k].poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"Ray node {k} did not start: {tail}")
            time.sleep(0.3)

    def processes(self, node: int) -> list[psutil.Process]:
        """The live processes of a node (its ``ray start`` and everything under it)."""
        try:
            top = psutil.Process(self.nodes[node].pid)
            found = [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        for p in found:
            try:
                self._seen.setdefault(p.pid, p.create_time())
            except psutil.Error:
                continue
        return found

    def workers(self, node: int, name: str) -> list[psutil.Process]:
        """Worker processes of ``node`` whose title names ``name`` (an actor class)."""
        out = []
        for p in self.processes(node):
            try:
                if name in " ".join(p.cmdline()):
                    out.append(p)
            except psutil.Error:
                continue
        return out

    def alive(self) -> list[int]:
        """The pids of every process the nodes were seen with that still runs (after ``stop``: none)."""
        out = []
        for pid, started in self._seen.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == started and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(pid)
            except psutil.Error:
                continue
        return out

    def stop(self, grace: float = 20) -> None:
        """SIGTERM every node (Ray drains and ends its processes), then SIGKILL whatever is left."""
        for k in range(len(self.nodes)):
            self.processes(k)  # remember every pid before the tree comes apart
        for node in reversed(self.nodes):
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for node in self.nodes:
            try:
                node.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
                node.wait(10)
        left = []
        for pid in self.alive():
            try:
                p = psutil.Process(pid)
                p.kill()
                left.append(p)
            except psutil.Error:
                continue
        # SIGKILL is delivered, not done: wait until they are gone (CI once saw one still there)
        psutil.wait_procs(left, timeout=10)
        self.nodes = []
        shutil.rmtree(self.root, ignore_errors=True)
