#!/usr/bin/env bash
# Run vLLM's benchmark client guidellm against a running edge, unchanged (OpenAI /v1/completions).
# guidellm lives in a throwaway venv outside the repo (not a project dependency).
#
#   bench/guidellm.sh EDGE_BASE_URL TOKENIZER [STREAMS] [REQUESTS_PER_LEVEL] [OUT_DIR]
#   e.g. bench/guidellm.sh http://127.0.0.1:8000 ~/.cache/draftlink/models/qwen2.5-coder-1.5b 1,4,8 16
#
# TOKENIZER: a Hugging Face tokenizer directory (the fetched Qwen directory), or "tiny" for the
# committed tiny tokenizer (wrapped into a temporary directory). Offline: nothing is downloaded.
set -euo pipefail
URL=${1:?edge base URL, e.g. http://127.0.0.1:8000}
TOK=${2:?tokenizer directory or "tiny"}
STREAMS=${3:-1,4,16}
REQUESTS=${4:-16}
OUT=${5:-docs/bench/guidellm}
VENV=${GUIDELLM_VENV:-/tmp/guidellm-venv}
PROMPT_TOKENS=${PROMPT_TOKENS:-128}
OUTPUT_TOKENS=${OUTPUT_TOKENS:-64}

if [ ! -x "$VENV/bin/guidellm" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q guidellm
fi
if [ "$TOK" = "tiny" ]; then
  TOK=$(mktemp -d)
  cp "$(dirname "$0")/../common/models/assets/tiny_tokenizer.json" "$TOK/tokenizer.json"
  echo '{"tokenizer_class": "PreTrainedTokenizerFast"}' > "$TOK/tokenizer_config.json"
fi
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
"$VENV/bin/guidellm" --version
"$VENV/bin/guidellm" run \
  --backend "kind=openai_http,target=$URL,request_format=/v1/completions" \
  --profile kind=concurrent --override profile.streams "$STREAMS" \
  --constraint "kind=max_requests,count=$REQUESTS" \
  --data "kind=synthetic_text,prompt_tokens=$PROMPT_TOKENS,output_tokens=$OUTPUT_TOKENS" \
  --tokenizer "kind=huggingface_auto,model=$TOK" \
  --output "kind=json,path=$OUT/guidellm.json" \
  --output kind=console \
  --disable-console-interactive
