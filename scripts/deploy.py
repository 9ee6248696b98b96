"""Deploy the llm-mesh contracts and write the deployment file every other component reads."""

from __future__ import annotations

import argparse
import sys

from chain import rpc
from chain.accounts import account_from_args
from chain.deploy import DeployParams, deploy_all
from chain.deployment import load_deployment, save_deployment
from scripts.common import deployment_path, parse_amount, parser, rpc_url, run


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    p.add_argument("--min-stake", default="1000", help="minimum node stake in MESH (default 1000)")
    p.add_argument("--unbonding-period", type=int, default=7 * 24 * 3600, help="seconds (default 7 days)")
    p.add_argument(
        "--unlock-delay", type=int, default=24 * 3600, help="escrow unlock delay, seconds (default 1 day)"
    )
    p.add_argument("--developers", help="treasury address for the 25%% developer share (default: deployer)")
    p.add_argument(
        "--infrastructure", help="treasury address for the 15%% infrastructure share (default: deployer)"
    )
    p.add_argument("--research", help="treasury address for the 10%% R&D share (default: deployer)")
    p.add_argument("--force", action="store_true", help="deploy again even if the deployment file is live")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    w3 = rpc.connect(rpc_url(args))
    path = deployment_path(args)
    if path.exists() and not args.force:
        existing = load_deployment(path, w3)
        if w3.eth.get_code(existing.settlement):
            print(f"already deployed on chain {existing.chain_id}: {path} (pass --force to redeploy)")
            return 0
    admin = account_from_args(args)
    params = DeployParams(
        min_stake=parse_amount(args.min_stake, "--min-stake"),
        unbonding_period=args.unbonding_period,
        unlock_delay=args.unlock_delay,
        developers=args.developers,
        infrastructure=args.infrastructure,
        research=args.research,
    )
    print(f"deploying to chain {w3.eth.chain_id} from {admin.address} ...", flush=True)
    deployment = deploy_all(w3, admin, params)
    save_deployment(deployment, path)
    for name, value in deployment.to_dict().items():
        print(f"  {name:15} {value}")
    print(f"wrote {path}")
    return 0


def cli() -> None:
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
