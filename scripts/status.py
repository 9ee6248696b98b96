"""Show the network: models, nodes (stake, reputation), what each node has settled and is still
owed, escrows and who earned what."""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from chain.units import format_timestamp, format_token
from chain.views import reputation_of, status_name
from scripts.common import Session, connect, parse_address, parser, run


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__, account=False)
    p.add_argument("--payer", action="append", default=[], help="also show this payer's escrow (repeatable)")
    p.add_argument(
        "--no-probe",
        action="store_true",
        help="do not ask each node's endpoint (/health) what it is owed; show only the chain",
    )
    return p


def table(title: str, header: tuple[str, ...], rows: list[tuple]) -> None:
    print(f"\n{title}")
    if not rows:
        print("  (none)")
        return
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for row in cells:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def models(session: Session) -> None:
    registry = session.models.functions
    rows = []
    for model_id in range(1, registry.modelCount().call() + 1):
        m = session.model(model_id)
        status = status_name(m.status).lower()
        price = format_token(m.price_per_1k)
        rows.append(
            (
                model_id,
                m.name,
                f"v{m.version}",
                status,
                price,
                m.context_window,
                ",".join(m.specialties),
                m.cid,
            )
        )
    table("models", ("id", "name", "ver", "status", "price/1K", "context", "specialties", "cid"), rows)


def nodes(session: Session) -> list[str]:
    registry = session.nodes.functions
    operators = registry.operatorsPage(0, registry.operatorCount().call()).call()
    rows = []
    for op in operators:
        n, rep = session.node(op), reputation_of(session.nodes, op)
        active = "yes" if registry.isActive(op).call() else "no"
        hosted = ",".join(str(i) for i in n.hosted_models) or "-"
        stake, unbonding, volume = (format_token(v) for v in (n.stake, n.unbonding, rep.volume_paid))
        counters = (rep.tokens_served, rep.receipts_settled, volume, rep.slash_count)
        rows.append((n.node_id, op, n.endpoint, stake, unbonding, active, hosted, *counters))
    header = (
        "node",
        "operator",
        "endpoint",
        "stake",
        "unbonding",
        "active",
        "models",
        "tokens",
        "receipts",
        "volume",
        "slashes",
    )
    table("nodes", header, rows)
    return operators


PROBE_TIMEOUT_S = 3.0
PROBE_LIMIT = 1 << 20  # bytes of /health read from one endpoint: the endpoint is the operator's


def probe(endpoint: str) -> dict[str, Any] | str:
    """A node's own payment report (`payments` in its /health), or why it could not be read. Only
    the node knows what it is owed: unsigned usage and unsettled receipts are off chain."""
    try:
        with httpx.stream("GET", endpoint.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S) as r:
            if r.status_code != 200:
                return f"/health answered {r.status_code}"
            body = b""
            for chunk in r.iter_bytes():
                body += chunk
                if len(body) > PROBE_LIMIT:
                    return "/health too large"
        report = json.loads(body).get("payments")
    except (httpx.HTTPError, ValueError):
        return "unreachable"
    except AttributeError:  # JSON, but not an object
        return "/health unreadable"
    if report is None:
        return "payment off"
    try:
        return {key: int(report[key]) for key in ("unsettled", "stored", "settled", "rejected")}
    except (KeyError, TypeError, ValueError):
        return "/health unreadable"


def payments(session: Session, operators: list[str], probe_nodes: bool) -> None:
    """Per node: what the chain has paid for its receipts, and what the node says it is owed."""
    infos = [session.node(op) for op in operators]
    if probe_nodes:
        with ThreadPoolExecutor(max_workers=16) as pool:
            reports = list(pool.map(probe, [n.endpoint for n in infos]))
    else:
        reports = ["not asked"] * len(infos)
    rows = []
    for op, n, report in zip(operators, infos, reports, strict=True):
        settled = format_token(reputation_of(session.nodes, op).volume_paid)
        if isinstance(report, str):
            rows.append((n.node_id, settled, report, "-", "-", "-"))
        else:
            counts = (report[key] for key in ("stored", "settled", "rejected"))
            rows.append((n.node_id, settled, format_token(report["unsettled"]), *counts))
    header = ("node", "settled", "unsettled", "receipts stored", "settled", "rejected")
    table("payments (settled: paid on chain; the rest as each node reports it)", header, rows)


def escrows(session: Session, extra: list[str]) -> None:
    deposits = session.settlement.events.EscrowDeposited().get_logs(
        from_block=session.deployment.block_number
    )
    payers = list(dict.fromkeys([e["args"]["payer"] for e in deposits] + extra))
    rows = []
    for payer in payers:
        address = parse_address(session.w3, payer, "--payer")
        escrow = session.escrow(address)
        available = session.settlement.functions.availableOf(address).call()
        amounts = (format_token(v) for v in (escrow.balance, available, escrow.unlocking))
        ready = format_timestamp(escrow.unlock_ready_at) if escrow.unlock_ready_at else "-"
        rows.append((payer, *amounts, ready))
    table("escrow", ("payer", "balance", "available", "unlocking", "ready at"), rows)


def _vesting(session: Session) -> int:
    unvested, unsynced, _end = session.vault.functions.pendingIncome().call()
    return unvested + unsynced


def earnings(session: Session, operators: list[str]) -> None:
    developers, infrastructure, research = session.settlement.functions.treasury().call()
    earned = session.settlement.functions.earnings
    rows = [(f"node {op}", format_token(earned(op).call())) for op in operators]
    rows += [
        ("developers (25%)", format_token(earned(developers).call())),
        ("infrastructure (15%)", format_token(earned(infrastructure).call())),
        ("research (10%)", format_token(earned(research).call())),
        ("HYSA vault assets (20% + slashes)", format_token(session.vault.functions.totalAssets().call())),
        ("HYSA vault income still vesting", format_token(_vesting(session))),
    ]
    table("unwithdrawn earnings", ("recipient", "amount"), rows)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    session = connect(args, need_account=False)
    d = session.deployment
    print(f"chain {d.chain_id} at block {session.w3.eth.block_number}; settlement {d.settlement}")
    models(session)
    operators = nodes(session)
    payments(session, operators, not args.no_probe)
    escrows(session, args.payer)
    earnings(session, operators)
    return 0


def cli() -> None:
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
