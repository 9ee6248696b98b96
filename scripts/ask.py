"""Ask the network one question and see who answered and what it cost.

Through a running router (--router URL, or $LLM_MESH_ROUTER_URL), or with the router running in
this process, paying from your account (--keystore or --dev-account) with the chain from
--rpc-url / --deployment (or the devnet's environment). The answer streams as it is written.
"""

from __future__ import annotations

import argparse
import os
import sys

from router.config import RouterConfigError, build_router_config
from router.sdk import ROUTER_URL_ENV, MeshClient, MeshError
from scripts.common import UsageError, deployment_path, parser, rpc_url, run


def build_parser() -> argparse.ArgumentParser:
    p = parser(__doc__)
    p.add_argument("prompt", help="what to ask")
    p.add_argument("--task", help="task type: debug, analyze, fix, clean, fix_helper, refactor, or any word")
    p.add_argument("--model", help="a model name on the network (default: the task's choice)")
    p.add_argument("--max-tokens", type=int, default=256, help="most tokens to pay for (default 256)")
    p.add_argument("--temperature", type=float, default=0.2, help="sampling temperature (default 0.2)")
    p.add_argument("--router", help=f"a running router's URL (default ${ROUTER_URL_ENV}, else in process)")
    return p


def client(args: argparse.Namespace) -> MeshClient:
    url = args.router or os.environ.get(ROUTER_URL_ENV)
    if url:
        return MeshClient(url)
    chain = {"rpc_url": rpc_url(args), "deployment": deployment_path(args)}
    if args.keystore is not None:
        chain |= {"keystore": args.keystore, "password_file": args.password_file}
    elif args.dev_account is not None:
        chain["dev_account"] = args.dev_account
    else:
        raise UsageError(
            "pay with --keystore FILE or --dev-account N, or ask a running router with --router URL"
        )
    try:
        config = build_router_config(None, chain=chain)
    except RouterConfigError as exc:
        raise UsageError(str(exc)) from None
    return MeshClient(config=config)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with client(args) as mesh:
        stream = mesh.stream(
            args.prompt,
            model_name=args.model,
            task_type=args.task,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
        )
        try:
            for piece in stream:
                print(piece, end="", flush=True)
        except MeshError as exc:
            print(f"\nerror: {exc}", file=sys.stderr)
            return 1
    answer = stream.response
    assert answer is not None
    print(
        f"\n\nserved by node {answer.node} with {answer.model}: {answer.prompt_tokens} prompt + "
        f"{answer.completion_tokens} completion tokens, cost {answer.cost_mesh}"
        + (f" (after {len(answer.failed_over)} failed host(s))" if answer.failed_over else "")
    )
    return 0


def cli() -> None:
    sys.exit(run(main))


if __name__ == "__main__":
    cli()
