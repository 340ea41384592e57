#!/usr/bin/env bash
# The README's demo: train on MovieLens-100K, export a bundle, start the service, show a recommendation.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORKDIR=${WORKDIR:-runs/demo}
PORT=${PORT:-8000}
MODEL=${MODEL:-lightgcn}

"$PY" -m trainer demo --workdir "$WORKDIR" --model "$MODEL" ${MAX_EPOCHS:+--max-epochs "$MAX_EPOCHS"}

echo "starting the service on 127.0.0.1:$PORT (embedded MemoryStore; set MODALREC_REDIS_URL to use Redis)"
"$PY" -m service --bundle-root "$WORKDIR/run/bundles" --host 127.0.0.1 --port "$PORT" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  if curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 $SERVER 2>/dev/null; then echo "the service exited" >&2; exit 1; fi
  sleep 0.5
done
USER_ID=$(head -2 "$WORKDIR/run/split.inter" | tail -1 | cut -f1)
CMD="curl -s -X POST http://127.0.0.1:$PORT/recommend/$USER_ID -H 'Content-Type: application/json' -d '{\"k\": 5}'"
echo
echo "\$ $CMD"
eval "$CMD"
echo
echo
if [ "${DEMO_KEEP_SERVING:-1}" = "1" ] && [ -t 0 ]; then
  echo "the service keeps running; try the curl above, open http://127.0.0.1:$PORT/docs, Ctrl-C to stop"
  wait $SERVER
fi
