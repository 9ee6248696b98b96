"""Start and stop a kubo daemon with its own repository on loopback ports (tests, devnet, nodes).

The repo is initialised with kubo's `test` profile, then pinned down further: API, gateway and swarm
on 127.0.0.1 ports we choose, no bootstrap peers, no mDNS, no autoconf, no telemetry, no DHT. Peers
find each other only through `connect()` (swarm connect), and blocks move between them over bitswap.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

import httpx

from storage.errors import StorageError

KUBO_ENV = {"IPFS_TELEMETRY": "off", "GOLOG_LOG_LEVEL": "error", "IPFS_LOGGING": "error"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_ipfs(explicit: str | None = None) -> str:
    """The kubo binary: `explicit`, $LLM_MESH_IPFS, the project's build/bin/ipfs or `ipfs` on PATH."""
    root = Path(__file__).resolve().parent.parent
    for candidate in (explicit, os.environ.get("LLM_MESH_IPFS"), str(root / "build" / "bin" / "ipfs")):
        if candidate and Path(candidate).exists():
            return candidate
    found = shutil.which("ipfs")
    if found is None:
        raise StorageError("kubo (`ipfs`) is not installed: run `make setup` (or `make kubo`)")
    return found


class KuboDaemon:
    """One kubo daemon: `with KuboDaemon(repo) as daemon: ...` inits the repo if needed, starts, stops."""

    def __init__(
        self,
        repo: str | Path,
        binary: str | None = None,
        api_port: int | None = None,
        gateway_port: int | None = None,
        swarm_port: int | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 15.0,
    ) -> None:
        self.repo = Path(repo)
        self.binary = find_ipfs(binary)
        self.api_port = api_port or free_port()
        self.gateway_port = gateway_port or free_port()
        self.swarm_port = swarm_port or free_port()
        self.start_timeout, self.stop_timeout = start_timeout, stop_timeout
        self.peer_id = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = self.repo.parent / f"{self.repo.name}.log"

    @property
    def api_url(self) -> str:
        """The RPC API base URL for KuboClient."""
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def swarm_address(self) -> str:
        """The multiaddr other daemons `swarm connect` to."""
        return f"/ip4/127.0.0.1/tcp/{self.swarm_port}/p2p/{self.peer_id}"

    def _env(self) -> dict[str, str]:
        return {**os.environ, **KUBO_ENV, "IPFS_PATH": str(self.repo)}

    def _run(self, *args: str) -> str:
        done = subprocess.run(
            [self.binary, *args], env=self._env(), capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise StorageError(
                f"`ipfs {' '.join(args)}` failed: {done.stderr.strip() or done.stdout.strip()}"
            )
        return done.stdout

    def init(self) -> None:
        """Create the repository (test profile) unless it exists, then write our addresses and settings."""
        if not (self.repo / "config").exists():
            self.repo.mkdir(parents=True, exist_ok=True)
            self._run("init", "--profile=test", "--empty-repo")
        config_path = self.repo / "config"
        config = json.loads(config_path.read_text())
        config["Addresses"].update(
            API=f"/ip4/127.0.0.1/tcp/{self.api_port}",
            Gateway=f"/ip4/127.0.0.1/tcp/{self.gateway_port}",
            Swarm=[f"/ip4/127.0.0.1/tcp/{self.swarm_port}"],
            Announce=[],
            NoAnnounce=[],
        )
        config["Bootstrap"] = []
        config.setdefault("Discovery", {}).setdefault("MDNS", {})["Enabled"] = False
        config["AutoConf"] = {**config.get("AutoConf", {}), "Enabled": False}
        config["Routing"] = {**config.get("Routing", {}), "Type": "none"}
        plugins = config.setdefault("Plugins", {})
        plugins["Plugins"] = {**(plugins.get("Plugins") or {}), "telemetry": {"Config": {"Mode": "off"}}}
        config_path.write_text(json.dumps(config, indent=2))
        self.peer_id = config["Identity"]["PeerID"]

    def start(self) -> Self:
        """Start the daemon and wait until its RPC API answers."""
        if self._proc is not None:
            return self
        self.init()
        log = self._log.open("ab")
        self._proc = subprocess.Popen(
            [self.binary, "daemon", "--migrate=false"], env=self._env(), stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise StorageError(f"kubo exited with code {self._proc.returncode}: {self._tail_log()}")
            try:
                if httpx.post(f"{self.api_url}/api/v0/id", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise StorageError(
            f"kubo did not answer on {self.api_url} within {self.start_timeout}s: {self._tail_log()}"
        )

    def _tail_log(self) -> str:
        try:
            return self._log.read_text(errors="replace")[-2000:].strip()
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the daemon (SIGTERM, then SIGKILL after stop_timeout)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
