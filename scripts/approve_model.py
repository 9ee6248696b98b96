"""Approve a proposed model version (curator role), so nodes may host and bill for it."""

from __future__ import annotations

import argparse
import sys

from chain.views import status_name
from scripts.common import UsageError, connect, parser, run


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    p.add_argument("--model-id", type=int, required=True, help="the model id printed by publish_model.py")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    session = connect(args)
    count = session.models.functions.modelCount().call()
    if not 1 <= args.model_id <= count:
        raise UsageError(f"no model {args.model_id}: model ids run from 1 to {count} (status.py lists them)")
    model = session.model(args.model_id)
    if status_name(model.status) == "Approved":
        print(f"model {args.model_id} ({model.name}) is already approved")
        return 0
    session.send(session.models.functions.approve(args.model_id))
    print(f"approved model {args.model_id} ({model.name} v{model.version}, cid {model.cid})")
    return 0


def cli() -> None:
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
