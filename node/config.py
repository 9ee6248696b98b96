"""Node configuration: a pydantic model loaded from a JSON file, overridable from the environment.

One file serves the operator's scripts and the daemon: `~/.llm-mesh/node.json` by default (or
`$LLM_MESH_NODE_CONFIG`, or `--config`). `scripts/setup-node.sh` creates it, `configure_node.py`
changes what it is given, `node/config.sample.json` is the committed example. Relative paths in it
(keystore, password file, deployment, cache) are relative to the file's own directory, so every
script and the daemon read the same files from any working directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from chain.files import write_atomic
from chain.units import parse_amount
from protocol.endpoints import check_endpoint

# The seeds' node requirements. CPU-only nodes are allowed (small models run well on CPUs), so the
# GPU minimum is a warning, never a refusal.
MINIMUM = {"vram_gb": 10, "cpu_cores": 8, "ram_gb": 32, "storage_gb": 500, "bandwidth_mbps": 100}
RECOMMENDED = {"vram_gb": 24, "cpu_cores": 16, "ram_gb": 64, "storage_gb": 2000, "bandwidth_mbps": 1000}
GPU_VRAM_GB = {
    "none": 0,
    "rtx3060": 12,
    "rtx3080": 10,
    "rtx3090": 24,
    "rtx4070": 12,
    "rtx4080": 16,
    "rtx4090": 24,
    "rtx5090": 32,
    "a10": 24,
    "l4": 24,
    "a100": 80,
    "h100": 80,
}


CONFIG_ENV = "LLM_MESH_NODE_CONFIG"
# The node API's port: 8080 is the devnet's kubo gateway.
DEFAULT_ENDPOINT = "http://127.0.0.1:8090"


def default_config_path() -> Path:
    """Where the node config lives unless `--config` says otherwise."""
    return Path(os.environ.get(CONFIG_ENV) or Path.home() / ".llm-mesh" / "node.json")


class ConfigError(Exception):
    """The node configuration is missing or invalid; the message says what to fix."""


class Hardware(BaseModel):
    """What the operator's machine offers (declared on chain as the node's hardware profile)."""

    gpu: str = "none"
    vram_gb: int = Field(0, ge=0, le=4096)
    cpu_cores: int = Field(..., ge=1, le=4096)
    ram_gb: int = Field(..., ge=1, le=65536)
    storage_gb: int = Field(..., ge=1, le=10_000_000)
    bandwidth_mbps: int = Field(100, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _gpu_has_memory(self) -> Hardware:
        if (self.gpu == "none") != (self.vram_gb == 0):
            raise ValueError(f"gpu {self.gpu!r} with vram_gb {self.vram_gb}: a GPU has memory, none has none")
        return self

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, value: str) -> str:
        name = value.lower().replace(" ", "").replace("-", "")
        if name not in GPU_VRAM_GB:
            raise ValueError(f"unknown GPU {value!r}; known: {', '.join(sorted(GPU_VRAM_GB))}")
        return name

    def below_minimum(self) -> list[str]:
        """Human-readable shortfalls against the seeds' minimum specs (empty when none)."""
        have = self.model_dump()
        return [
            f"{key} {have[key]} is below the minimum {need}"
            for key, need in MINIMUM.items()
            if have[key] < need
        ]

    def profile(self) -> str:
        """The compact JSON profile registered on chain."""
        return json.dumps(self.model_dump(), separators=(",", ":"), sort_keys=True)


class HostedModel(BaseModel):
    """One model this node serves, and how llama.cpp should run it."""

    name: str = Field(..., min_length=1, max_length=64)
    model_id: int | None = Field(None, ge=1)
    gpu_layers: int = Field(0, ge=-1, le=1000)
    n_ctx: int = Field(4096, ge=128, le=1_048_576)  # tokens per request (prompt + completion)
    threads: int = Field(4, ge=1, le=1024)
    slots: int = Field(4, ge=1, le=64)  # requests decoded together in one batch
    # An idle model that gets a request waits this long for the rest of a burst (each request
    # within it of the last, 5x it at most) so the burst prefills in one step: a step takes no new
    # sequence once it runs. Costs a lone request on an idle model up to this much TTFT; 0: off.
    burst_window_ms: float = Field(2.0, ge=0, le=100)
    eager: bool = False  # load at start instead of on the first request


class ServingLimits(BaseModel):
    """What one request and one client may ask of the node; safe defaults for a public endpoint."""

    max_body_bytes: int = Field(1 << 20, ge=1024, le=1 << 30)
    max_tokens_cap: int = Field(2048, ge=1, le=1_048_576)  # completion tokens one request may ask for
    default_max_tokens: int = Field(512, ge=1, le=1_048_576)  # chat requests that do not say
    request_timeout_s: float = Field(600.0, gt=0, le=86_400)  # the whole request, queueing included
    token_timeout_s: float = Field(60.0, gt=0, le=3_600)  # between two tokens (or to the first)
    queue_size: int = Field(64, ge=0, le=100_000)  # requests waiting for a slot, over all models
    max_connections: int = Field(256, ge=1, le=100_000)
    memory_budget_gb: float = Field(8.0, gt=0, le=65_536)  # loaded models: file size + KV estimate

    @model_validator(mode="after")
    def _defaults_fit(self) -> ServingLimits:
        if self.default_max_tokens > self.max_tokens_cap:
            raise ValueError(
                f"default_max_tokens {self.default_max_tokens} exceeds max_tokens_cap {self.max_tokens_cap}"
            )
        return self


class PaymentSettings(BaseModel):
    """How the node admits, bills and settles paid requests (amounts in MESH, as text)."""

    enabled: bool = True  # False: serve without payment (a private node)
    # Unsigned usage (billed, not yet countersigned) one payer may run up: the node's exposure per
    # payer that stops countersigning.
    credit_limit: str = "0.01"
    # What one payer may owe this node (countersigned but unpaid + unsigned + in flight) as a share
    # of its escrow: the bound on what a payer spreading requests over many nodes can leave unpaid.
    max_owed_fraction: float = Field(0.25, gt=0, le=1)
    settle_interval_s: float = Field(60.0, gt=0, le=86_400)  # the oldest unsettled receipt waits at most this
    settle_amount: str = "1"  # settle once this much is unsettled over all payers
    settle_batch: int = Field(50, ge=1, le=500)  # receipts per settle transaction (and settle at this many)
    receipt_ttl_s: int = Field(30 * 86_400, ge=3_600, le=365 * 86_400)  # receipt expiry from signing
    max_auth_ttl_s: int = Field(600, ge=10, le=86_400)  # how far ahead an auth's deadline may be
    rate_per_s: float = Field(20.0, gt=0, le=100_000)  # requests per second per payer
    rate_burst: int = Field(40, ge=1, le=1_000_000)

    @field_validator("credit_limit", "settle_amount")
    @classmethod
    def _amounts(cls, value: str) -> str:
        parse_amount(value)  # AmountError (a ValueError) says what to write instead
        return value

    def credit_limit_units(self) -> int:
        return parse_amount(self.credit_limit)

    def settle_amount_units(self) -> int:
        return parse_amount(self.settle_amount)


class ChainSettings(BaseModel):
    """How the node reaches the chain and signs."""

    rpc_url: str = "http://127.0.0.1:8545"
    deployment: Path = Path(".devnet/deployment.json")
    keystore: Path | None = None
    password_file: Path | None = None
    # Blocks an event must be under before the node acts on it; None: 2, or 0 on a local dev chain
    # (chain id 31337), which mines only when a transaction comes.
    confirmations: int | None = Field(None, ge=0, le=1000)
    poll_interval_s: float = Field(2.0, gt=0, le=3600)

    @field_validator("rpc_url")
    @classmethod
    def _rpc_url(cls, value: str) -> str:
        return check_endpoint(value)


class NodeConfig(BaseSettings):
    """The whole node configuration. Environment variables override the file:
    LLM_MESH_NODE_<FIELD>, nested with `__` (e.g. LLM_MESH_NODE_CHAIN__RPC_URL)."""

    model_config = SettingsConfigDict(env_prefix="LLM_MESH_NODE_", env_nested_delimiter="__", extra="forbid")

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        # The environment wins over the file's values, so a deployment can override one field.
        return (env_settings, init_settings)

    node_id: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    endpoint: str = Field(DEFAULT_ENDPOINT, max_length=256)
    hardware: Hardware
    models: list[HostedModel] = Field(default_factory=list, max_length=32)
    chain: ChainSettings = Field(default_factory=ChainSettings)
    cache_dir: Path = Path(".cache/models")
    cache_limit_gb: float = Field(100.0, gt=0)
    # The kubo RPC API the node fetches models through.
    ipfs_api: str = "http://127.0.0.1:5001"
    # Where the daemon listens; None: the endpoint's host and port (use 0.0.0.0 behind a public URL).
    listen: str | None = Field(None, max_length=256)
    serving: ServingLimits = Field(default_factory=ServingLimits)
    payments: PaymentSettings = Field(default_factory=PaymentSettings)

    @field_validator("endpoint", "ipfs_api")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return check_endpoint(value)

    def resolved(self, base: Path) -> NodeConfig:
        """This config with its relative paths made absolute against `base` (the file's directory)."""

        def absolute(path: Path | None) -> Path | None:
            return None if path is None else path if path.is_absolute() else (base / path).resolve()

        chain = self.chain.model_copy(
            update={
                "deployment": absolute(self.chain.deployment),
                "keystore": absolute(self.chain.keystore),
                "password_file": absolute(self.chain.password_file),
            }
        )
        return self.model_copy(update={"chain": chain, "cache_dir": absolute(self.cache_dir)})

    @model_validator(mode="after")
    def _cross_checks(self) -> NodeConfig:
        names = [m.name for m in self.models]
        if len(names) != len(set(names)):
            raise ValueError("a model is listed twice in models")
        if self.cache_limit_gb > self.hardware.storage_gb:
            raise ValueError(
                f"cache_limit_gb {self.cache_limit_gb} exceeds the declared storage "
                f"{self.hardware.storage_gb} GB"
            )
        if self.hardware.gpu == "none" and any(m.gpu_layers != 0 for m in self.models):
            raise ValueError("gpu_layers must be 0 for every model on a node without a GPU")
        return self


def load_config(path: Path) -> NodeConfig:
    """Load and validate the config file (environment variables override it)."""
    try:
        data: dict[str, Any] = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ConfigError(
            f"no node config at {path}: create one with scripts/setup-node.sh or configure_node.py "
            f"(or pass --config / set {CONFIG_ENV})"
        ) from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    try:
        config = NodeConfig(**data)
    except ValidationError as exc:
        raise ConfigError(f"{path} is invalid:\n{_errors(exc)}") from exc
    return config.resolved(Path(path).parent)


def build_config(**values: Any) -> NodeConfig:
    """Validate config values (from a script's arguments), with readable errors."""
    try:
        return NodeConfig(**values)
    except ValidationError as exc:
        raise ConfigError(_errors(exc)) from exc


def save_config(config: NodeConfig, path: Path) -> None:
    """Write the config atomically (it names the keystore, so only its owner reads it)."""
    write_atomic(path, config.model_dump_json(indent=2, exclude_none=True) + "\n", mode=0o600)


def _errors(exc: ValidationError) -> str:
    return "\n".join(f"  {'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors())
