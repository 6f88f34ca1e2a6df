#!/usr/bin/env bash
# xbook end to end at toy scale on the CPU: novels -> books -> scaffolds -> vocabulary -> trajectories
# -> training on 8 simulated devices (with a restart from checkpoint) -> a generated passage.
#
# Usage: bash launch/demo.sh
# Environment: XBOOK_BOOKS (folder of Gutenberg .txt files; default ../shared/corpus/gutenberg, else the
#   three novels are downloaded), XBOOK_DEMO_OUT (output folder; default demo_out/).
# Example: XBOOK_DEMO_OUT=/tmp/xbook_demo bash launch/demo.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/launch/setup.sh"
cd "$ROOT"
XBOOK="$ROOT/.venv/bin/xbook"
export XLA_FLAGS="--xla_force_host_platform_device_count=8"
export TF_CPP_MIN_LOG_LEVEL=2

OUT="${XBOOK_DEMO_OUT:-$ROOT/demo_out}"
BOOKS="${XBOOK_BOOKS:-$ROOT/../shared/corpus/gutenberg}"
IDS="pg46,pg35,pg43"   # A Christmas Carol, The Time Machine, Jekyll and Hyde: short, three authors
mkdir -p "$OUT"
started=$(date +%s)

echo "== 1. clean and segment novels"
if [[ ! -d "$BOOKS" ]]; then
  echo "   $BOOKS not found: downloading the three novels from Project Gutenberg into $OUT/gutenberg"
  "$XBOOK" books fetch --ids 46,35,43 --cache "$OUT/gutenberg"
  BOOKS="$OUT/gutenberg"
fi
"$XBOOK" books segment --books "$BOOKS" --ids "$IDS" --out "$OUT/books.jsonl" --overwrite  # a rerun replaces it

echo "== 2. planning scaffolds (extractive summarizer)"
"$XBOOK" scaffold build --books "$OUT/books.jsonl" --out "$OUT/scaffolds.jsonl" \
  --cache "$OUT/summaries.sqlite"

echo "== 3. SentencePiece vocabulary with segment markers"
"$XBOOK" vocab train --scaffolds "$OUT/scaffolds.jsonl" --out "$OUT/vocab.model" --vocab_size 2048 --overwrite

echo "== 4. trajectories through the seqio task and feature converter"
"$XBOOK" data inspect --scaffolds "$OUT/scaffolds.jsonl" --vocab "$OUT/vocab.model" --seq_len 256

GIN=(--gin_file=configs/runs/demo.gin "--gin.SCAFFOLDS='$OUT/scaffolds.jsonl'" "--gin.VOCAB='$OUT/vocab.model'")
echo "== 5. train to step 60 on 8 simulated devices (checkpoints at 30 and 60)"
"$XBOOK" train "${GIN[@]}" --run_dir "$OUT/run" --gin.train.steps=60
echo "== 6. restart: resume from the latest checkpoint and continue to step 120"
"$XBOOK" train "${GIN[@]}" --run_dir "$OUT/run"

echo "== 7. generate a passage from a prompt"
"$XBOOK" generate --run_dir "$OUT/run" --max_new_tokens 120 \
  --prompt "Write a novel about a cold-hearted old man who learns kindness on Christmas Eve."

echo "== 8. artifacts ($(( $(date +%s) - started )) s)"
echo "   books:        $OUT/books.jsonl"
echo "   scaffolds:    $OUT/scaffolds.jsonl (summary cache: $OUT/summaries.sqlite)"
echo "   vocabulary:   $OUT/vocab.model"
echo "   run:          $OUT/run (metrics.jsonl, tensorboard/, checkpoints/, config.gin, model.json)"
