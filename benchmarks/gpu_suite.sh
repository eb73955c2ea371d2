#!/usr/bin/env bash
# The GPU measurements behind docs/performance.md, in two phases of < 10 minutes each on a 4-GPU host.
#
#   bash benchmarks/gpu_suite.sh single   # one GPU per job, four jobs at once:
#       GPU0  prepare-data c4 (Llama-3 tokenizer) + `llamactl train` 1B, 40 steps, all speed options
#       GPU1  benchmarks/generate.py (HF vs our decode modes, batch 1 and 8) + the gpu-marked tests
#       GPU2  200-step loss check: HF vs llamactl eager vs llamactl fastest, same weights and C4 data
#       GPU3  benchmarks/train_throughput.py hf/eager/fast-layers at micro-batch 4 (+ profile), then mb 8
#   bash benchmarks/gpu_suite.sh fsdp     # `llamactl train --gpus 4` (FSDP2, sharded checkpoints) 30
#       steps, the same resumed from its step-15 checkpoint, then `--gpus 2`, then one GPU (baseline)
#   bash benchmarks/gpu_suite.sh two      # the same on a 2-GPU host (first finds an FSDP set-up that trains)
#
# Needs: a tokenizer folder at .bench/llama3 and a C4-layout folder at .bench/c4 (en/*.json.gz).
# Results go to $OUT (or /tmp/llamactl-suite/out): JSON from the benchmarks, logs, and one tarball
# with every run's metrics.jsonl / summary.json / train.log.
set -u
PHASE=${1:?usage: gpu_suite.sh single|fsdp}
REPO=$(cd "$(dirname "$0")/.." && pwd)
W=/tmp/llamactl-suite
OUT=${OUT:-$W/out}
mkdir -p "$W" "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-$REPO}
TOK=$REPO/.bench/llama3
PY=${PYTHON:-python3}
FAST=(model.compile=true model.attn_backend=cudnn optimizer.name=adamw optimizer.fused=true)
C4=(--yaml "$REPO/yamls/llama3-1b-c4.yaml" "variables.tokenizer_name=$TOK" --data-root "$W"
    eval_subset_num_batches=4 "${FAST[@]}")

prep() {
  [ -f "$W/c4_small/train_small/index.json" ] && return 0
  $PY -m llamactl prepare-data c4 --source "$REPO/.bench/c4" --tokenizer "$TOK" --out "$W/c4_small" \
      --train-samples 0 --val-samples 200 > "$OUT/prepare.log" 2>&1
}

bundle() {  # every run directory's small files, in one tarball
  (cd "$W" && find . -path ./out -prune -o \( -name metrics.jsonl -o -name summary.json -o -name 'train*.log' \
     -o -name config.yaml \) -print | tar czf "$OUT/runs-$PHASE.tgz" -T -)
}

if [ "$PHASE" = single ]; then
  nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpus.txt"
  prep || { echo "prepare-data failed"; tail -20 "$OUT/prepare.log"; exit 1; }
  ( CUDA_VISIBLE_DEVICES=0 timeout 540 $PY -m llamactl train "${C4[@]}" --runs-dir "$W/runs1" --duration 40ba \
      --save-interval 1000ba global_train_batch_size=4 device_train_microbatch_size=4 save_weights_only=true \
      > "$OUT/train-1gpu.log" 2>&1; echo "train-1gpu exit $?" >> "$OUT/train-1gpu.log" ) &
  ( export CUDA_VISIBLE_DEVICES=1
    timeout 420 $PY benchmarks/generate.py --new-tokens 256 --hf-repeats 1 \
      --modes eager,graph,compile,compile-autotune --out "$OUT/generate.json" > "$OUT/generate.log" 2>&1
    echo "generate exit $?" >> "$OUT/generate.log"
    timeout 100 $PY -m pytest tests/test_generate_engine.py -q -m gpu -p no:cacheprovider >> "$OUT/generate.log" 2>&1
    echo "gpu tests exit $?" >> "$OUT/generate.log" ) &
  ( CUDA_VISIBLE_DEVICES=2 timeout 540 $PY benchmarks/train_throughput.py --variants "" --loss-check 200 \
      --loss-check-variants hf,eager,fast-layers --micro-batch 4 --data-dir "$W/c4_small" --split train_small \
      --out "$OUT/losscheck.json" > "$OUT/losscheck.log" 2>&1; echo "losscheck exit $?" >> "$OUT/losscheck.log" ) &
  ( export CUDA_VISIBLE_DEVICES=3
    timeout 330 $PY benchmarks/train_throughput.py --variants hf,eager,fast-layers --micro-batch 4 --steps 30 \
      --profile fast-layers --out "$OUT/train-mb4.json" > "$OUT/train-mb4.log" 2>&1
    echo "train-mb4 exit $?" >> "$OUT/train-mb4.log"
    timeout 200 $PY benchmarks/train_throughput.py --variants eager,fast-layers --micro-batch 8 --steps 30 \
      --out "$OUT/train-mb8.json" > "$OUT/train-mb8.log" 2>&1
    echo "train-mb8 exit $?" >> "$OUT/train-mb8.log"
    cp "$REPO"/benchmarks/results/profile-fast-layers-mb4.txt "$OUT/" 2>/dev/null ) &
  wait
  bundle
  tail -n 4 "$OUT"/*.log
elif [ "$PHASE" = fsdp ]; then
  prep || exit 1
  FS=(fsdp_config.state_dict_type=sharded save_num_checkpoints_to_keep=3 --save-interval 15ba --no-sample
      ${FSDP_EXTRA:-})
  timeout 200 $PY -m llamactl train "${C4[@]}" --gpus 4 --runs-dir "$W/fsdp4" --duration 30ba "${FS[@]}" \
      global_train_batch_size=16 device_train_microbatch_size=4 > "$OUT/fsdp4.log" 2>&1
  rc=$?; echo "fsdp4 exit $rc" >> "$OUT/fsdp4.log"
  if [ $rc != 0 ]; then  # fall back to the plain options once, so the scaling is measured at all
    C4+=(model.compile=false model.attn_backend=auto optimizer.name=decoupled_adamw)
    rm -rf "$W/fsdp4"
    timeout 150 $PY -m llamactl train "${C4[@]}" --gpus 4 --runs-dir "$W/fsdp4" --duration 30ba "${FS[@]}" \
        global_train_batch_size=16 device_train_microbatch_size=4 > "$OUT/fsdp4-plain.log" 2>&1
    echo "fsdp4-plain exit $?" >> "$OUT/fsdp4-plain.log"
  fi
  R4=$(ls -d "$W"/fsdp4/*/ | head -1)
  timeout 170 $PY -m llamactl train "${C4[@]}" --gpus 4 --runs-dir "$W/fsdp4-resume" --duration 30ba "${FS[@]}" \
      global_train_batch_size=16 device_train_microbatch_size=4 "load_path=${R4}checkpoints/ep0-ba15" \
      > "$OUT/fsdp4-resume.log" 2>&1
  echo "fsdp4-resume exit $?" >> "$OUT/fsdp4-resume.log"
  timeout 170 $PY -m llamactl train "${C4[@]}" --gpus 2 --runs-dir "$W/fsdp2" --duration 30ba "${FS[@]}" \
      global_train_batch_size=8 device_train_microbatch_size=4 > "$OUT/fsdp2.log" 2>&1
  echo "fsdp2 exit $?" >> "$OUT/fsdp2.log"
  # the 1-GPU baseline of the same options on this host, for the scaling efficiency
  CUDA_VISIBLE_DEVICES=0 timeout 150 $PY -m llamactl train "${C4[@]}" --runs-dir "$W/one" --duration 30ba \
      --save-interval 1000ba global_train_batch_size=4 device_train_microbatch_size=4 save_weights_only=true \
      --no-sample eval_loader=null > "$OUT/one.log" 2>&1
  echo "one exit $?" >> "$OUT/one.log"
  bundle
  tail -n 6 "$OUT"/fsdp*.log "$OUT/one.log"
elif [ "$PHASE" = two ]; then  # a 2-GPU host: pick the FSDP set-up that trains, 2-GPU run + resume, 1-GPU baseline
  prep || exit 1
  D=(--yaml "$REPO/yamls/llama3-1b-c4.yaml" "variables.tokenizer_name=$TOK" --data-root "$W" --duration 3ba
     --no-sample eval_loader=null global_train_batch_size=4 device_train_microbatch_size=2 --save-interval 100ba)
  X=
  for cand in fsdp_config.mixed_precision=FULL fsdp_config.version=1; do
    name=${cand//[^a-zA-Z0-9]/-}
    timeout 120 $PY -m llamactl train "${D[@]}" --gpus 2 --runs-dir "$W/diag-$name" "$cand" > "$OUT/diag-$name.log" 2>&1
    rc=$?; echo "diag $cand exit $rc" | tee -a "$OUT/diag-$name.log"
    [ $rc = 0 ] && { X=$cand; break; }
  done
  [ -n "$X" ] || exit 1
  FS=(fsdp_config.state_dict_type=sharded save_num_checkpoints_to_keep=3 --save-interval 15ba --no-sample "$X")
  timeout 200 $PY -m llamactl train "${C4[@]}" --gpus 2 --runs-dir "$W/fsdp2" --duration 30ba "${FS[@]}" \
      global_train_batch_size=8 device_train_microbatch_size=4 > "$OUT/fsdp2.log" 2>&1
  echo "fsdp2 exit $?" >> "$OUT/fsdp2.log"
  R2=$(ls -d "$W"/fsdp2/*/ | head -1)
  timeout 170 $PY -m llamactl train "${C4[@]}" --gpus 2 --runs-dir "$W/fsdp2-resume" --duration 30ba "${FS[@]}" \
      global_train_batch_size=8 device_train_microbatch_size=4 "load_path=${R2}checkpoints/ep0-ba15" \
      > "$OUT/fsdp2-resume.log" 2>&1
  echo "fsdp2-resume exit $?" >> "$OUT/fsdp2-resume.log"
  CUDA_VISIBLE_DEVICES=0 timeout 150 $PY -m llamactl train "${C4[@]}" --runs-dir "$W/one" --duration 30ba \
      --save-interval 1000ba global_train_batch_size=4 device_train_microbatch_size=4 save_weights_only=true \
      --no-sample eval_loader=null > "$OUT/one.log" 2>&1
  echo "one exit $?" >> "$OUT/one.log"
  bundle
  tail -n 3 "$OUT"/*.log
fi
