#!/usr/bin/env bash
# A long-running dialog with a named assistant (prompts/chat.txt): the names, date and time are filled in,
# and control returns to you whenever the model writes "$USER_NAME:".
#
#   USER_NAME=Ada AI_NAME=Lovelace MODEL=model.gguf examples/chatLLaMa.sh [more llamapy run options]
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMAPY="${LLAMAPY:-llamapy}"
PROMPT_TEMPLATE="${PROMPT_TEMPLATE:-prompts/chat.txt}"
USER_NAME="${USER_NAME:-USER}"
AI_NAME="${AI_NAME:-ChatLLaMa}"
N_THREAD="${N_THREAD:-8}"
N_PREDICTS="${N_PREDICTS:-2048}"
# Generation options; anything given on the command line comes later and wins.
GEN_OPTIONS="${GEN_OPTIONS:---ctx_size 2048 --temp 0.7 --top_k 40 --top_p 0.5 --repeat_last_n 256 --batch_size 1024 --repeat_penalty 1.17647}"

model=()
if [ -n "${MODEL:-}" ]; then model=(--model "$MODEL"); fi

prompt_file="$(mktemp -t llamapy_prompt.XXXXXXX)"
trap 'rm -f "$prompt_file"' EXIT

# the names may hold characters special to sed (/, &): escape them
esc() { printf '%s' "$1" | sed -e 's/[\/&]/\\&/g'; }
sed -e "s/\[\[USER_NAME\]\]/$(esc "$USER_NAME")/g" \
    -e "s/\[\[AI_NAME\]\]/$(esc "$AI_NAME")/g" \
    -e "s/\[\[DATE_TIME\]\]/$(date +%H:%M)/g" \
    -e "s/\[\[DATE_YEAR\]\]/$(date +%Y)/g" \
    "$PROMPT_TEMPLATE" > "$prompt_file"

# shellcheck disable=SC2086 # intended word splitting of LLAMAPY and GEN_OPTIONS
$LLAMAPY run $GEN_OPTIONS ${model[@]+"${model[@]}"} \
    --threads "$N_THREAD" --n_predict "$N_PREDICTS" \
    --color --interactive \
    --file "$prompt_file" \
    --reverse-prompt "${USER_NAME}:" \
    --in-prefix ' ' \
    "$@"
