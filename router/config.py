"""Router configuration: a pydantic model from a JSON file and/or the environment
(LLM_MESH_ROUTER_<FIELD>, nested with `__`), with safe defaults; `router/config.sample.json` is the
committed example. Relative paths are relative to the config file's directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from chain.units import parse_amount


class RouterConfigError(Exception):
    """The router config cannot be used; the message says what to fix."""


class RouterChain(BaseModel):
    """How the router reads the chain, and whose escrow pays."""

    rpc_url: str = "http://127.0.0.1:8545"
    deployment: Path = Path(".devnet/deployment.json")
    keystore: Path | None = None
    password_file: Path | None = None
    dev_account: int | None = Field(None, ge=0, le=9)  # an Anvil account, for a local devnet only
    confirmations: int | None = Field(None, ge=0, le=1000)
    poll_interval_s: float = Field(1.0, gt=0, le=3600)


class RouterConfig(BaseSettings):
    """The whole router configuration."""

    model_config = SettingsConfigDict(
        env_prefix="LLM_MESH_ROUTER_", env_nested_delimiter="__", extra="forbid"
    )

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        return (env_settings, init_settings)

    host: str = "127.0.0.1"
    port: int = Field(8100, ge=0, lt=65536)
    chain: RouterChain = Field(default_factory=RouterChain)
    state_dir: Path = Path("~/.llm-mesh/router")  # the chain watcher's state
    # Task type -> model name, over the built-in table (router.tasks).
    tasks: dict[str, str] = Field(default_factory=dict)
    # Pay nodes (sign auths and receipts). Off only for nodes that serve without payment.
    payments: bool = True
    attempts: int = Field(3, ge=1, le=10)
    connect_timeout_s: float = Field(3.0, gt=0, le=60)
    first_token_timeout_s: float = Field(60.0, gt=0, le=600)
    token_timeout_s: float = Field(60.0, gt=0, le=600)
    request_timeout_s: float = Field(600.0, gt=0, le=3600)  # a whole non-streamed answer
    probe_interval_s: float = Field(2.0, gt=0, le=600)
    default_max_tokens: int = Field(256, ge=1, le=1_048_576)
    max_body_bytes: int = Field(1 << 20, ge=1024)
    low_escrow: str = "1"  # MESH; below it the wallet warns
    in_flight_slack: int = Field(4, ge=0, le=64)
    # A countersigned receipt no request carried to its node within this is posted to it.
    receipt_idle_s: float = Field(2.0, gt=0, le=3600)

    @field_validator("low_escrow")
    @classmethod
    def _amount(cls, value: str) -> str:
        parse_amount(value)
        return value

    @model_validator(mode="after")
    def _account(self) -> RouterConfig:
        if self.payments and (self.chain.keystore is None) == (self.chain.dev_account is None):
            raise ValueError("payments need exactly one of chain.keystore and chain.dev_account")
        return self

    @property
    def low_escrow_units(self) -> int:
        return parse_amount(self.low_escrow)

    def resolved(self, base: Path) -> RouterConfig:
        """This config with relative paths made absolute against `base`."""

        def absolute(path: Path | None) -> Path | None:
            if path is None:
                return None
            path = path.expanduser()
            return path if path.is_absolute() else (base / path).resolve()

        chain = self.chain.model_copy(
            update={
                "deployment": absolute(self.chain.deployment),
                "keystore": absolute(self.chain.keystore),
                "password_file": absolute(self.chain.password_file),
            }
        )
        return self.model_copy(update={"chain": chain, "state_dir": absolute(self.state_dir)})


def devnet_chain() -> dict[str, Any]:
    """The chain settings every script reads from the environment (what `make devnet` exports)."""
    env = {"rpc_url": os.environ.get("LLM_MESH_RPC_URL"), "deployment": os.environ.get("LLM_MESH_DEPLOYMENT")}
    return {key: value for key, value in env.items() if value}


def build_router_config(path: Path | None = None, **values: Any) -> RouterConfig:
    """The config from `path` (if given), then $LLM_MESH_RPC_URL / $LLM_MESH_DEPLOYMENT, then
    `values` on top (LLM_MESH_ROUTER_* variables override all); RouterConfigError says what is wrong."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise RouterConfigError(f"no router config at {path}") from None
        except json.JSONDecodeError as exc:
            raise RouterConfigError(f"{path} is not valid JSON: {exc}") from None
    chain = {**data.get("chain", {}), **devnet_chain(), **values.pop("chain", {})}
    try:
        config = RouterConfig(**{**data, **values, "chain": chain})
    except ValidationError as exc:
        lines = (f"  {'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors())
        raise RouterConfigError("router config is invalid:\n" + "\n".join(lines)) from None
    return config.resolved(Path(path).parent if path is not None else Path.cwd())
