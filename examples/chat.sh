#!/usr/bin/env bash
# Llama 2 chat in the terminal: every line you type is wrapped in [INST] ... [/INST] and starts with BOS,
# the way Llama 2 chat models were trained. The system prompt is the first [INST] block.
#
#   MODEL=llama-2-7b-chat.Q4_K_M.gguf examples/chat.sh [more llamapy run options]
#
# MODEL unset: llamapy's default model (which is not a Llama 2 model: expect odd answers).
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMAPY="${LLAMAPY:-llamapy}"
N_THREAD="${N_THREAD:-8}"
SYSTEM="${SYSTEM:-You are a helpful, respectful and honest assistant. Answer as helpfully as you can while staying safe. If a question makes no sense, or is not factually coherent, explain why instead of answering something incorrect. If you do not know the answer, say so rather than guessing.}"
FIRST="${FIRST:-Hi! Who are you?}"

model=()
if [ -n "${MODEL:-}" ]; then model=(-m "$MODEL"); fi

# shellcheck disable=SC2086 # LLAMAPY may be a command with arguments ("python -m llamapy")
exec $LLAMAPY run ${model[@]+"${model[@]}"} --color -i -c 4096 -t "$N_THREAD" \
    --temp 0.5 --top_k 40 --top_p 0.9 --repeat_penalty 1.1 \
    --in-prefix-bos --in-prefix ' [INST] ' --in-suffix ' [/INST]' \
    -p "[INST] <<SYS>>
$SYSTEM
<</SYS>>

$FIRST [/INST]" \
    "$@"
