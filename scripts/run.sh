#!/usr/bin/env bash
# `make run`: the fake OpenAI upstream on 127.0.0.1:4010 and zgate on port 4000
# with examples/config.yaml. Ctrl-C stops both.
set -euo pipefail
build=${1:-build}
top=$(cd "$(dirname "$0")/.." && pwd)
port=${PORT:-4000}

"$top/$build/fakeupstream/fake_upstream" --host 127.0.0.1 --port 4010 &
fake=$!
trap 'kill $fake 2>/dev/null; wait $fake 2>/dev/null || true' EXIT

cat <<MSG

  zgate: http://localhost:$port   master key: sk-1234
  try:   curl http://localhost:$port/v1/chat/completions \\
           -H 'Authorization: Bearer sk-1234' -H 'Content-Type: application/json' \\
           -d '{"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello"}]}'

MSG
"$top/$build/zgate" --config "$top/examples/config.yaml" --port "$port"
