#!/usr/bin/env bash
# Prepare a node operator's machine: install the project (make setup), create the node's keystore
# and write the node config (DIR/node.json) from the sample. Safe to run again: existing files are
# kept. DIR defaults to ~/.llm-mesh, where every script and the daemon look for the config.
#
#   scripts/setup-node.sh [--dir DIR] [--password-file FILE]
#
# Then: configure_node.py (hardware), register_node.py (stake + register), host_model.py.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$(dirname "${LLM_MESH_NODE_CONFIG:-$HOME/.llm-mesh/node.json}")"
password_file=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir="$(mkdir -p "$2" && cd "$2" && pwd)"; shift 2 ;;
    --password-file) password_file="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "setup-node.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

echo "==> installing dependencies (make setup)"
make -C "$root" setup >/dev/null

mkdir -p "$dir"
chmod 700 "$dir"
py="$root/.venv/bin/python"
keystore="$dir/node-keystore.json"
if [ -f "$keystore" ]; then
  echo "==> keystore exists: $keystore"
else
  echo "==> creating the node's keystore: $keystore"
  if [ -n "$password_file" ]; then
    "$py" -m scripts.new_keystore "$keystore" --password-file "$password_file"
  else
    "$py" -m scripts.new_keystore "$keystore"
  fi
fi

config="$dir/node.json"
if [ -f "$config" ]; then
  echo "==> node config exists: $config"
else
  echo "==> writing $config from the sample"
  "$py" - "$root/node/config.sample.json" "$config" "$keystore" "$password_file" "$root" <<'PY'
import json, os, sys
from pathlib import Path

from node.config import build_config, save_config

sample, target, keystore, password_file, root = sys.argv[1:6]
config = json.load(open(sample))
config["chain"]["keystore"] = keystore
config["chain"]["deployment"] = os.environ.get("LLM_MESH_DEPLOYMENT") or f"{root}/.devnet/deployment.json"
config["chain"]["rpc_url"] = os.environ.get("LLM_MESH_RPC_URL") or config["chain"]["rpc_url"]
if password_file:
    config["chain"]["password_file"] = password_file
else:
    config["chain"].pop("password_file", None)
config["cache_dir"] = str(Path(target).parent / "models")
config["hardware"]["cpu_cores"] = os.cpu_count() or 1
save_config(build_config(**config), Path(target))
PY
fi

address="0x$("$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["address"])' "$keystore")"
# The scripts find the config by themselves at the default place; elsewhere they need --config.
opt=""
[ "$config" = "$HOME/.llm-mesh/node.json" ] || opt=" --config $config"
cat <<NEXT
==> done: the node account is $address. Next (on \`make devnet\`, fund it first:
  $py -m scripts.faucet --dev-account 0 --to $address --amount 2000):
  $py -m scripts.configure_node$opt --gpu-specs none --ram 32 --storage 500
  $py -m scripts.register_node$opt --stake 1000
  $py -m scripts.host_model$opt --model gemma-3-270m
NEXT
