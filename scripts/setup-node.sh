#!/usr/bin/env bash
# Prepare a node operator's machine: install the project (make setup), create the node's keystore
# and write a node config from the sample. Safe to run again: existing files are kept.
#
#   scripts/setup-node.sh [--dir DIR] [--password-file FILE]
#
# Then: configure_node.py (hardware), register_node.py (stake + register), host_model.py.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$HOME/.llm-mesh"
password_file=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --password-file) password_file="$2"; shift 2 ;;
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
  "$py" - "$root/node/config.sample.json" "$config" "$keystore" "$password_file" <<'PY'
import json, sys
sample, target, keystore, password_file = sys.argv[1:5]
config = json.load(open(sample))
config["chain"]["keystore"] = keystore
if password_file:
    config["chain"]["password_file"] = password_file
else:
    config["chain"].pop("password_file", None)
with open(target, "w") as out:
    json.dump(config, out, indent=2)
    out.write("\n")
PY
fi

address="0x$("$py" -c 'import json, sys; print(json.load(open(sys.argv[1]))["address"])' "$keystore")"
cat <<NEXT
==> done: the node account is $address. Next (on \`make devnet\`, fund it first:
  $py -m scripts.faucet --dev-account 0 --to $address --amount 2000):
  $py -m scripts.configure_node --config $config --gpu-specs rtx4090 --ram 64 --storage 2000 --keystore $keystore
  $py -m scripts.register_node --config $config --keystore $keystore --stake 1000
  $py -m scripts.host_model --config $config --keystore $keystore --model gemma-3-270m
NEXT
