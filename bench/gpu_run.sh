#!/usr/bin/env bash
# One GPU session's benchmarks (issue #12), under ~9 minutes on one H200: ours against the Hugging Face baseline
# (../shared/bench/hf_baseline.py) on llama-1b and gpt2-124m, compiled and eager; which SDPA kernel GQA gets; the
# memory estimate against measured peaks on three grid cases. Every result is a JSON file in the output directory,
# and summary.json puts ours beside HF with the ratio.
#
#   bash bench/gpu_run.sh [OUT_DIR]          # default: $OUT, else /tmp/llmtrain-gpu-run
#   bash bench/gpu_run.sh --smoke [OUT_DIR]  # CPU: tiny shapes, two steps, eager only: proves the script runs
#
# Runs are ordered by importance and each has its own timeout; once BUDGET_S (default 520 s) is spent the rest are
# skipped (and listed as skipped), so the whole script stays inside a 10-minute device slot. Needs torch
# with CUDA and transformers (for the baseline) in $PYTHON (default: python).
set -uo pipefail

SMOKE=0
if [[ "${1:-}" == "--smoke" ]]; then SMOKE=1; shift; fi
OUT_DIR="${1:-${OUT:-/tmp/llmtrain-gpu-run}}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
BUDGET_S="${BUDGET_S:-520}"
START_S=$SECONDS
mkdir -p "$OUT_DIR"
export PYTHONPATH="$REPO/contract:$REPO/trainer_image:${PYTHONPATH:-}"

find_hf_baseline() {  # beside the checkout (../shared/bench), or a shared/ copied into it
  local candidate
  for candidate in "${HF_BASELINE:-}" "$REPO/shared/bench/hf_baseline.py" "$REPO/../shared/bench/hf_baseline.py" \
    "$REPO/../../shared/bench/hf_baseline.py"; do
    if [[ -n "$candidate" && -f "$candidate" ]]; then echo "$candidate"; return 0; fi
  done
  return 1
}

# run NAME TIMEOUT_S CMD...: the command's last JSON line into NAME.json, its log into NAME.log
run() {
  local name="$1" limit="$2"; shift 2
  local left=$((BUDGET_S - (SECONDS - START_S)))
  if ((left < 20)); then
    echo "{\"name\": \"$name\", \"skipped\": \"time budget spent\"}" > "$OUT_DIR/$name.json"
    echo "skip  $name (budget)"; return 0
  fi
  ((limit > left)) && limit=$left
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  local rc=$?
  local line
  line="$(grep '^{' "$OUT_DIR/$name.log" | tail -n 1)"
  if [[ $rc -eq 0 && -n "$line" ]]; then
    echo "$line" > "$OUT_DIR/$name.json"
  else
    echo "{\"name\": \"$name\", \"failed\": true, \"rc\": $rc}" > "$OUT_DIR/$name.json"
  fi
  echo "done  $name rc=$rc $((SECONDS - t0))s"
}

HF_BASELINE_PY="$(find_hf_baseline)" || { echo "hf_baseline.py not found (set HF_BASELINE)" >&2; exit 2; }
OURS=("$PY" "$REPO/bench/trainer_throughput.py")  # + --preset P --parallel L [--compile]
HF=("$PY" "$HF_BASELINE_PY")                       # + --shape S [--compile]
echo "out: $OUT_DIR  hf: $HF_BASELINE_PY  smoke: $SMOKE  budget: ${BUDGET_S}s"
"$PY" - > "$OUT_DIR/environment.json" <<'EOF'
import json, platform, torch
cuda = torch.cuda.is_available()
print(json.dumps({"torch": torch.__version__, "python": platform.python_version(),
                  "device": torch.cuda.get_device_name() if cuda else "cpu", "cuda": torch.version.cuda}))
EOF

if ((SMOKE)); then
  STEPS=(--steps 2 --warmup 1)
  run ours-tiny-ddp-eager 240 "${OURS[@]}" --preset tiny --parallel ddp --precision fp32 "${STEPS[@]}"
  run hf-tiny-eager 240 "${HF[@]}" --shape tiny --steps 2 --device cpu
  run sdpa-gqa 120 "$PY" "$REPO/bench/sdpa_gqa.py" --smoke
  run memory-tiny-ddp-fp32 240 "$PY" "$REPO/bench/memory_estimate.py" --case tiny-ddp-fp32
else
  STEPS=(--steps 8 --warmup 3)
  run sdpa-gqa 60 "$PY" "$REPO/bench/sdpa_gqa.py"
  run ours-llama-1b-ddp-compiled 150 "${OURS[@]}" --preset llama-1b --parallel ddp --compile "${STEPS[@]}"
  run hf-llama-1.1b-compiled 150 "${HF[@]}" --shape llama-1.1b --compile --steps 8
  run ours-llama-1b-ddp-eager 60 "${OURS[@]}" --preset llama-1b --parallel ddp "${STEPS[@]}"
  run hf-llama-1.1b-eager 60 "${HF[@]}" --shape llama-1.1b --steps 8
  run ours-gpt2-124m-ddp-compiled 100 "${OURS[@]}" --preset gpt2-124m --parallel ddp --compile "${STEPS[@]}"
  run hf-gpt2-124m-compiled 100 "${HF[@]}" --shape gpt2-124m --compile --steps 8
  run ours-llama-1b-zero2-compiled 150 "${OURS[@]}" --preset llama-1b --parallel zero2 --compile "${STEPS[@]}"
  run ours-gpt2-124m-ddp-eager 45 "${OURS[@]}" --preset gpt2-124m --parallel ddp "${STEPS[@]}"
  run hf-gpt2-124m-eager 45 "${HF[@]}" --shape gpt2-124m --steps 8
  run memory-estimate 90 "$PY" "$REPO/bench/memory_estimate.py" --case tiny-ddp-fp32 \
    --case small-gqa-fsdp-bf16-accum2 --case mid-fsdp-bf16-selective
fi

"$PY" - "$OUT_DIR" "$SMOKE" <<'EOF'
import json, sys
from pathlib import Path
out, smoke = Path(sys.argv[1]), sys.argv[2] == "1"
pairs = [("ours-tiny-ddp-eager", "hf-tiny-eager")] if smoke else [
    ("ours-llama-1b-ddp-compiled", "hf-llama-1.1b-compiled"), ("ours-llama-1b-zero2-compiled", "hf-llama-1.1b-compiled"),
    ("ours-llama-1b-ddp-eager", "hf-llama-1.1b-eager"), ("ours-gpt2-124m-ddp-compiled", "hf-gpt2-124m-compiled"),
    ("ours-gpt2-124m-ddp-eager", "hf-gpt2-124m-eager")]
results = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.stem != "summary"}
def ratio(ours, hf):
    a, b = results.get(ours, {}).get("tokens_per_s"), results.get(hf, {}).get("tokens_per_s")
    return {"ours": ours, "hf": hf, "ours_tokens_per_s": a, "hf_tokens_per_s": b,
            "ours_over_hf": round(a / b, 3) if a and b else None}
summary = {"comparisons": [ratio(*pair) for pair in pairs], "results": results}
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
for c in summary["comparisons"]:
    print(f"{c['ours']:32s} {c['ours_tokens_per_s']!s:>10} vs {c['hf']:24s} {c['hf_tokens_per_s']!s:>10}  x{c['ours_over_hf']}")
EOF
echo "total $((SECONDS - START_S))s; results in $OUT_DIR"
