#!/usr/bin/env bash
# Chat with "Bob" (prompts/chat-with-bob.txt): plain text completion that hands control back to you
# whenever the model writes "User:". Works with any model, base or chat.
#
#   MODEL=model.gguf examples/chat-with-bob.sh [more llamapy run options]
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMAPY="${LLAMAPY:-llamapy}"
model=()
if [ -n "${MODEL:-}" ]; then model=(-m "$MODEL"); fi

# --keep 48: when the context fills up and shifts, the first 48 tokens stay (the opening paragraph,
# which is 44 tokens with the default model's tokenizer), so Bob stays Bob.
# shellcheck disable=SC2086 # LLAMAPY may be a command with arguments ("python -m llamapy")
exec $LLAMAPY run ${model[@]+"${model[@]}"} -c 512 -n 256 --keep 48 --repeat_penalty 1.0 --color -i \
    -r "User:" -f prompts/chat-with-bob.txt \
    "$@"
