#!/usr/bin/env bash
# Alpaca-style instruction following: each line you type is sent as "### Instruction:" and the model
# answers under "### Response:"; control comes back to you when it is done.
#
#   MODEL=alpaca-7b.Q4_0.gguf examples/alpaca.sh [more llamapy run options]
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMAPY="${LLAMAPY:-llamapy}"
model=()
if [ -n "${MODEL:-}" ]; then model=(-m "$MODEL"); fi

# shellcheck disable=SC2086 # LLAMAPY may be a command with arguments ("python -m llamapy")
exec $LLAMAPY run ${model[@]+"${model[@]}"} --color -f prompts/alpaca.txt -ins \
    -c 2048 --temp 0.2 -n 256 --repeat_penalty 1.3 \
    "$@"
