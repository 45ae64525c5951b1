#!/usr/bin/env bash
# Llama 3 chat in the terminal: each line you type becomes a user turn between Llama 3's header tokens,
# and generation hands control back at <|eot_id|> (the end of the assistant's turn).
#
#   MODEL=Meta-Llama-3-8B-Instruct.Q4_K_M.gguf examples/chat_llama3.sh [more llamapy run options]
#
# MODEL unset: llamapy's default model (which is not a Llama 3 model: expect odd answers).
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMAPY="${LLAMAPY:-llamapy}"
N_THREAD="${N_THREAD:-6}"
SYSTEM="${SYSTEM:-You are a helpful, smart, kind and efficient AI assistant. You always do your best to fulfil every request from the user.}"
FIRST="${FIRST:-Hi! What can you do?}"

model=()
if [ -n "${MODEL:-}" ]; then model=(-m "$MODEL"); fi

# -c 0: the model's own context length. The \n below are escapes that llamapy turns into newlines.
# shellcheck disable=SC2086 # LLAMAPY may be a command with arguments ("python -m llamapy")
exec $LLAMAPY run ${model[@]+"${model[@]}"} --color -i -c 0 -t "$N_THREAD" \
    --temp 0.2 --repeat_penalty 1.1 \
    -r '<|eot_id|>' \
    --in-prefix '<|start_header_id|>user<|end_header_id|>\n\n' \
    --in-suffix '<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n' \
    -p "<|start_header_id|>system<|end_header_id|>\n\n$SYSTEM<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n$FIRST<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n" \
    "$@"
