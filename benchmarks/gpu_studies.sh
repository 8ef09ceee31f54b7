#!/usr/bin/env bash
# Two studies on one lent GPU machine, side by side, within one device call (issues 21 and 22):
#
#   1. the forked-BA quality study: the Multi30k-4k long-regime configuration of docs/studies/multi30k_4k_long
#      (same command, fp32), arms fixed_steps, ba, ba_symkl (alpha 3), ba_fork_enc, ba_fork_enc_symkl, ba_fork_top,
#      ba_fork_top_symkl and equal_time, seeds 1-3;
#   2. the Transformer-LM data-constrained study: recipes/transformer_lm_ptb_m4.yaml on the first 50,000 tokens of
#      PTB's training text (the slice of docs/studies/ptb_long), arms fixed_steps, fixed_samples, ba, ba_symkl
#      (alpha 1) and ba_symkl3 (alpha 3), equal_time, seeds 1-3.
#
# Each study is one `python -m seqba.compare --jobs N`: N runs at a time share the GPU (and the machine's cores), so
# training seconds, and the equal_time arm's updates, are measured under that shared load. Runs still going at
# DEADLINE seconds are stopped; the tables then hold the finished runs. Writes $OUT/studies.tar.gz (the study
# folders without checkpoints) and $OUT/machine.txt.
#
#   bash benchmarks/gpu_studies.sh DATA_ROOT OUT           # DATA_ROOT holds multi30k/ and ptb/
#   SMOKE=1 bash benchmarks/gpu_studies.sh ../shared/data /tmp/gs   # CPU, a few updates per run, one seed
set -uo pipefail
data=$(cd "$1" && pwd); out=$(mkdir -p "$2" && cd "$2" && pwd)
cd "$(dirname "$0")/.."
export SEQBA_DATA=$data OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
deadline=${DEADLINE:-500}
work=${WORK:-studies}
seeds=1,2,3; m30k_updates=2000; lm_updates=2000; validate=100; jobs_m30k=8; jobs_lm=6; tiny=()
if [[ -n "${SMOKE:-}" ]]; then
  seeds=1; m30k_updates=4; lm_updates=4; validate=2; jobs_m30k=3; jobs_lm=3
  tiny=(model.d_model=32 model.ffn_dim=64 model.num_heads=2)
fi

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  $py -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
  lscpu | grep -E "Model name|^CPU\(s\)"; } > "$out/machine.txt" 2>&1

symkl=ba.consistency=sym_kl
m30k=("$py" -m seqba.compare recipes/transformer_multi30k_m4.yaml --seeds $seeds --out "$work/multi30k_4k_fork"
  --jobs $jobs_m30k --eval-args=--beam=4
  --arms fixed_steps,ba,ba_symkl,ba_fork_enc,ba_fork_enc_symkl,ba_fork_top,ba_fork_top_symkl,equal_time
  --arm ba_symkl:$symkl,ba.consistency_alpha=3
  --arm ba_fork_enc_symkl:ba.fork_layer=2,$symkl,ba.consistency_alpha=3
  --arm ba_fork_top_symkl:ba.fork_layer=3,$symkl,ba.consistency_alpha=3
  model.d_model=128 model.ffn_dim=512 model.encoder_layers=2 model.decoder_layers=2 model.num_heads=4
  data.prepared_dir=data-bin/multi30k_4k data.prepare.max_train_lines=4000 data.prepare.vocab_size=4000
  train.max_updates=$m30k_updates train.validate_interval_updates=$validate train.save_interval_updates=$validate
  train.mixed_precision=no "${tiny[@]}")
lm=("$py" -m seqba.compare recipes/transformer_lm_ptb_m4.yaml --seeds $seeds --out "$work/transformer_lm_ptb_50k"
  --jobs $jobs_lm --arms fixed_steps,fixed_samples,ba,ba_symkl,ba_symkl3,equal_time
  --arm ba_symkl:$symkl,ba.consistency_alpha=1 --arm ba_symkl3:$symkl,ba.consistency_alpha=3
  data.max_train_tokens=50000 train.max_updates=$lm_updates train.validate_interval_updates=$validate
  train.mixed_precision=no "${tiny[@]}")

start=$(date +%s)
timeout --kill-after=10 "$deadline" "${m30k[@]}" > "$out/multi30k.log" 2>&1 &
p1=$!
timeout --kill-after=10 "$deadline" "${lm[@]}" > "$out/lm.log" 2>&1 &
p2=$!
wait $p1; rc1=$?; wait $p2; rc2=$?
echo "multi30k rc $rc1, lm rc $rc2, $(( $(date +%s) - start )) s" | tee -a "$out/machine.txt"
"${m30k[@]}" --report-only > "$out/multi30k_report.log" 2>&1
"${lm[@]}" --report-only > "$out/lm_report.log" 2>&1
tar -czf "$out/studies.tar.gz" --exclude='*.pt' --exclude='checkpoints' "$work/multi30k_4k_fork" \
  "$work/transformer_lm_ptb_50k" "$out"/*.log 2>/dev/null
ls -la "$out"
tail -n 14 "$out/multi30k_report.log" "$out/lm_report.log"
