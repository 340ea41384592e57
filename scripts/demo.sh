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
curl -fsS "http://127.0.0.1:$PORT/model" > "$WORKDIR/model.json"
if "$PY" -c 'import json, sys; sys.exit(not json.load(open(sys.argv[1]))["has_item_encoder"])' "$WORKDIR/model.json"; then
  # A brand-new movie. With a text encoder in the bundle its text goes in as raw text (encoded by text_encoder.onnx,
  # as `trainer features` encoded the catalogue's); it has no KG facts, so its kg vector is all zero (= missing).
  # Without one, the features of the dataset's first movie are sent under a new id. Then item_encoder.onnx.
  "$PY" - "$WORKDIR/ml-100k-mm" "$WORKDIR/model.json" > "$WORKDIR/new_item.json" <<'PYEOF'
import json, pathlib, sys

import numpy as np

directory, model = pathlib.Path(sys.argv[1]), json.load(open(sys.argv[2]))
if model.get("text_encoder"):
    features = {name: [0.0] * dim for name, dim in model["modalities"].items()}
    features[model["text_encoder"]] = "Toy Story 3 (2010): Animation, Children's, Comedy"
else:
    features = {p.name[: -len("_feat.npy")]: np.load(p)[0].tolist() for p in sorted(directory.glob("*_feat.npy"))}
print(json.dumps({"item_id": "new-movie-1", "features": features}))
PYEOF
  # With MODALREC_WRITE_TOKEN exported the service (which reads it) refuses writes without it: send it, by name (the
  # command is echoed, the secret is not).
  AUTH=${MODALREC_WRITE_TOKEN:+" -H \"Authorization: Bearer \$MODALREC_WRITE_TOKEN\""}
  ADD="curl -s -X POST http://127.0.0.1:$PORT/items -H 'Content-Type: application/json'$AUTH -d @$WORKDIR/new_item.json"
  if "$PY" -c 'import json, sys; sys.exit(not json.load(open(sys.argv[1])).get("text_encoder"))' "$WORKDIR/model.json"; then
    echo "\$ cat $WORKDIR/new_item.json   # (the kg vector shortened here)"
    "$PY" -c 'import json, sys; f = json.load(open(sys.argv[1])); print(json.dumps({"item_id": f["item_id"], "features": {k: (v if isinstance(v, str) else v[:3] + ["..."]) for k, v in f["features"].items()}}))' "$WORKDIR/new_item.json"
    echo "\$ $ADD   # a new movie from its raw text"
  else
    echo "\$ $ADD   # a new item from its text + kg features"
  fi
  eval "$ADD"
  echo
  WITH_NEW="curl -s -X POST http://127.0.0.1:$PORT/recommend/$USER_ID -H 'Content-Type: application/json' -d '{\"k\": 5, \"new_items\": 1}'"
  echo "\$ $WITH_NEW   # one place reserved for new items"
  eval "$WITH_NEW"
  echo
  echo
else
  echo "(this bundle has no item encoder: its dataset has no item features)"
  echo
fi
if [ "${DEMO_KEEP_SERVING:-1}" = "1" ] && [ -t 0 ]; then
  echo "the service keeps running; try the curl above, open http://127.0.0.1:$PORT/docs, Ctrl-C to stop"
  wait $SERVER
fi
