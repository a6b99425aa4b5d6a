#!/usr/bin/env bash
# The GPU checks of issue 12 (speed vs PEFT and the bare model, device placement) in one run; every step has its own
# time limit (730 s if every step used all of it; expected well under the device tool's 600 s); everything goes under $OUT.
#
# How to run it (a session with a lent GPU, through the device tool):
#   1. Here, once: save the shapes' tokenizers and a slice of SST-2 (the device machine has neither the
#      packages that ship the models nor ../shared/data):
#        PYTHONPATH=src .venv/bin/python benchmarks/model_shapes.py        # runs/shapes/_tokenizers (~5 MB)
#        mkdir -p runs/gpu_inputs && head -4001 ../shared/data/sst2/train.tsv > runs/gpu_inputs/sst2.tsv
#   2. Call the device tool's `run` with
#        command:   bash benchmarks/gpu_checks.sh
#        carry:     ["runs/shapes/_tokenizers", "runs/gpu_inputs"]
#        timeout_s: 600
#      The models are random BERT-large / SmolLM2-135M shapes built there from a config (~20 s each). The
#      device machine's own Python (CUDA torch, transformers, peft) runs it: `python` from PATH unless
#      PYTHON is set; $OUT/gpu_checks.log starts with the versions it found. The tool copies $OUT back
#      (JSON records, per-step outputs, the log); copy the tables into benchmarks/README.md ("Step time and
#      peak memory per method", GPU columns).
#
# What it runs (BERT-large shape, batch 32 x ~90 tokens, as the issue measured), each with --device cuda:
#   - speed_soft_prompts.py  fp32 (TF32 matmuls) and bf16: prompt tuning, p-tuning-v2 vs PEFT vs bare
#     (targets: ours_ptv2 / peft_prefix <= 1.0, ours_ptv2 / bare <= 1.10);
#   - speed_weight_methods.py fp32 and bf16: lora / adapter / bitfit / finetune vs PEFT LoRA (target <= 1.0);
#   - in_context_speed.py on the llama-135m shape (SmolLM2-135M's), batch 1 and 32 (target: >= 3x at batch 1);
#   - gpu_devices.py: every command on the GPU with its defaults (auto device, bf16), mixed precision,
#     cuda:0, bf16 artifacts' round trip, in-context / zero-shot / generation paths, the pool, the searches;
#   - profile_deep_prompts.py operator counts (CPU-side dispatch of the same step).
# Each step has its own time limit, so one slow step cannot eat the others'.
set -u
OUT=${OUT:-benchmarks/results/gpu}
PY=${PYTHON:-python}
mkdir -p "$OUT"
LOG="$OUT/gpu_checks.log"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
{
  date; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available(), '| transformers', transformers.__version__, '| peft', peft.__version__)"
} >"$LOG" 2>&1

step() {  # step SECONDS NAME CMD...: run one check under a time limit, log its tail
  local limit=$1 name=$2; shift 2
  echo "=== $name ($(date +%T))" >>"$LOG"
  timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
  echo "exit $? after $SECONDS s in all" >>"$LOG"
  grep '^|' "$OUT/$name.txt" >>"$LOG"
}

DATA=runs/gpu_inputs/sst2.tsv
[ -f "$DATA" ] || DATA=../shared/data/sst2/train.tsv
COMMON="--data $DATA --device cuda --model bert-large --batch-size 32 --seq-len 90 --rounds 20 --warmup 3"
for dt in float32 bfloat16; do
  step 110 "soft_prompts_$dt" $PY benchmarks/speed_soft_prompts.py $COMMON --dtype $dt --settings verbalizer \
    --no-peft-mlm --out "$OUT/speed_soft_prompts_$dt.json"
  step 110 "weight_methods_$dt" $PY benchmarks/speed_weight_methods.py $COMMON --dtype $dt --no-inference \
    --out "$OUT/speed_weight_methods_$dt.json"
done
step 100 in_context_batch1 $PY benchmarks/in_context_speed.py --data "$DATA" --model llama-135m --device cuda --batch-sizes 1 32 \
  --queries 64 --rounds 3 --accuracy 0 --out "$OUT/in_context_speed.json"
step 150 devices $PY benchmarks/gpu_devices.py --device cuda --out "$OUT/gpu_devices.json"
step 40 profile_deep_prompts $PY benchmarks/profile_deep_prompts.py --model bert-large --batch-size 32 --seq-len 90 \
  --top 15 --out "$OUT/profile_deep_prompts.json"
echo "all done after $SECONDS s" >>"$LOG"
cat "$LOG"
