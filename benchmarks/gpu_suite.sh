#!/usr/bin/env bash
# The GPU measurements behind docs/performance.md, in two phases of < 10 minutes each on a 4-GPU host.
#
#   bash benchmarks/gpu_suite.sh single   # one GPU per job, four jobs at once:
#       GPU0  prepare-data c4 (Llama-3 tokenizer) + `llamactl train` 1B, 40 steps, all speed options
#       GPU1  benchmarks/generate.py (HF vs our decode modes, batch 1 and 8) + the gpu-marked tests
#       GPU2  200-step loss check: HF vs llamactl eager vs llamactl fastest, same weights and C4 data
#       GPU3  benchmarks/train_throughput.py hf/eager/fast-layers at micro-batch 4 (+ profile), then mb 8
#   bash benchmarks/gpu_suite.sh ab       # speed options on/off, one job per GPU (pair), at once:
#       GPU0  benchmarks/generate.py HF vs graph/compile/compile-autotune (all decode options on) + gpu tests
#       GPU1  decode A/B at batch 1: before (no fusion, repeat_kv, no tuning), + fusion, + tuning,
#             + grouped attention (with a kernel profile), the other attention forms
#       GPU2+3  FSDP2 on 2 GPUs, 12 steps each: all speed options, then without compile, without
#             cuDNN/fused AdamW, plain (full tracebacks); then GPU3 train_throughput mb4 fast-layers
#             with the eager vs the compiled loss, GPU2 mb8 fast-layers
#   bash benchmarks/gpu_suite.sh final    # 4-GPU host, ~7 min: GPU0 200-step loss check HF vs all options,
#       GPUs 1-2 FSDP2 --gpus 2 (sharded save at step 8, resume from it, reshard_after_forward=false),
#       GPU3 the 1-GPU baseline (no FSDP) + a profile of fast-layers; then FSDP2 --gpus 4.
#       On a 2-GPU host: the FSDP2 --gpus 2 runs, then the baseline + profile and the loss check at once.
#       16 steps each, all speed options, micro-batch 4 per GPU. (Its 2026-11-28 run also had the
#       decode table on GPU0: benchmarks/generate.py --repeats 5 --modes graph,compile.)
#   bash benchmarks/gpu_suite.sh scale    # 2-GPU host, ~8 min: GPU0 the 1-GPU baseline + profile, FSDP2 in
#       one process; GPU1 the 200-step loss check; then benchmarks/train_throughput.py under torchrun
#       (FSDP2 on 2 GPUs, a profile per rank) and FSDP2 with bf16 gradient reduction (mixed_precision=PURE)
#   bash benchmarks/gpu_suite.sh scale-tuned  # 2-GPU host, ~6 min: the link (nvidia-smi topo), 1 GPU at
#       micro-batch 8, FSDP2 --gpus 2 at micro-batch 8, then with reshard_after_forward=false and bf16
#       gradient reduction (mixed_precision=PURE) at micro-batch 8 and 4
#   bash benchmarks/gpu_suite.sh fsdp     # `llamactl train --gpus N` on all N GPUs of the host (FSDP2,
#       sharded checkpoints) 30 steps, the same resumed from its step-15 checkpoint, `--gpus 2` when
#       N > 2, then one GPU with the same options (the scaling baseline); ~8 minutes on 4 GPUs
#
# Needs: a tokenizer folder at .bench/llama3 and a C4-layout folder at .bench/c4 (en/*.json.gz).
# Results go to $OUT (or /tmp/llamactl-suite/out): JSON from the benchmarks, logs, and one tarball
# with every run's metrics.jsonl / summary.json / train.log.
set -u
PHASE=${1:?usage: gpu_suite.sh single|ab|final|scale|scale-tuned|fsdp}
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

# --- the final and scale phases' runs
FS=(fsdp_config.state_dict_type=sharded save_num_checkpoints_to_keep=3)
tr() {  # NAME GPUS [args...]: 16 steps of the 1B shape, micro-batch 4 per GPU, all speed options
  local name=$1 n=$2; shift 2; local g=(); [ "$n" -gt 1 ] && g=(--gpus "$n")
  LLAMACTL_DEBUG=1 timeout 170 $PY -m llamactl train "${C4[@]}" "${g[@]}" --runs-dir "$W/$name" --duration 16ba \
    --no-sample eval_loader=null global_train_batch_size=$((4 * n)) device_train_microbatch_size=4 "$@" \
    > "$W/$name.log" 2>&1
  echo "$name exit $?" | tee -a "$W/$name.log"; }
pack() { (cd "$W" && tar czf "$OUT/final-runs.tgz" ./*.log $(find fsdp* one* -name 'train*.log' -o -name metrics.jsonl \
   -o -name summary.json -o -name config.yaml 2>/dev/null)) 2>/dev/null; }  # a run not yet started: no folder
losscheck() {  # correctness at speed: 200 steps, HF vs every option (compiled loss)
  timeout "$1" $PY benchmarks/train_throughput.py --variants "" --loss-check 200 \
    --loss-check-variants hf,fast-layers --micro-batch 4 --data-dir "$W/c4_small" --split train_small \
    --out "$OUT/losscheck.json" > "$W/losscheck.log" 2>&1; echo "losscheck exit $?" >> "$W/losscheck.log"; }
fsdp2_trio() {  # on the two GPUs in CUDA_VISIBLE_DEVICES: sharded save at step 8, resume from it, no reshard
  tr fsdp2 2 "${FS[@]}" --save-interval 8ba
  R=$(ls -d "$W"/fsdp2/*/ | head -1)
  tr fsdp2-resume 2 "${FS[@]}" --save-interval 1000ba save_weights_only=true "load_path=${R}checkpoints/ep0-ba8"
  tr fsdp2-keep 2 "${FS[@]}" --save-interval 1000ba save_weights_only=true fsdp_config.reshard_after_forward=false; }
baseline_and_profile() {  # the scaling baseline (no FSDP), then where a step's time goes now
  tr one 1 --save-interval 1000ba save_weights_only=true
  timeout 200 $PY benchmarks/train_throughput.py --variants fast-layers --micro-batch 4 --steps 30 \
    --profile fast-layers --out "$W/train-profile.json" > "$W/train-profile.log" 2>&1
  cp "$REPO"/benchmarks/results/profile-fast-layers-mb4.txt "$OUT/" 2>/dev/null; }

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
elif [ "$PHASE" = ab ]; then
  nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpus.txt"
  prep || { echo "prepare-data failed"; tail -20 "$OUT/prepare.log"; exit 1; }
  G=(benchmarks/generate.py --new-tokens 256 --batch-sizes 1 --no-hf)
  ( export CUDA_VISIBLE_DEVICES=0
    timeout 420 $PY benchmarks/generate.py --new-tokens 256 --hf-repeats 1 --modes graph,compile,compile-autotune \
      --out "$OUT/generate.json" > "$OUT/generate.log" 2>&1; echo "generate exit $?" >> "$OUT/generate.log"
    timeout 100 $PY -m pytest tests/test_generate_engine.py tests/test_model_decode.py -q -m gpu -p no:cacheprovider \
      >> "$OUT/generate.log" 2>&1; echo "gpu tests exit $?" >> "$OUT/generate.log" ) &
  ( export CUDA_VISIBLE_DEVICES=1
    for v in "before:--no-fuse --decode-attention repeat --modes compile-plain" \
             "fuse:--decode-attention repeat --modes compile-plain" \
             "fuse-tuned:--decode-attention repeat --modes compile" \
             "all:--modes compile --profile $W/decode-profile.txt" \
             "sdpa-gqa:--modes compile --decode-attention sdpa-gqa" \
             "grouped-reduce:--modes compile --decode-attention grouped-reduce"; do
      echo "== ${v%%:*}" >> "$OUT/decode-ab.log"
      timeout 100 $PY "${G[@]}" ${v#*:} --out "$W/dec-${v%%:*}.json" >> "$OUT/decode-ab.log" 2>&1
    done ) &
  # (Until this line named fsdp_config, these 2-GPU runs were DDP: the YAML has no fsdp_config.)
  ( export CUDA_VISIBLE_DEVICES=2,3  # FSDP2 on 2 GPUs: which option (if any) breaks it, full tracebacks
    f2() { local name=$1; shift
      LLAMACTL_DEBUG=1 timeout 90 $PY -m llamactl train "${C4[@]}" --gpus 2 --runs-dir "$W/$name" --duration 12ba \
        --no-sample eval_loader=null --save-interval 1000ba save_weights_only=true global_train_batch_size=8 \
        device_train_microbatch_size=4 fsdp_config.state_dict_type=sharded "$@" > "$W/$name.log" 2>&1
      echo "$name exit $?" | tee -a "$W/$name.log"; }
    f2 f2-fast
    f2 f2-nocompile model.compile=false
    f2 f2-compile-only model.attn_backend=auto optimizer.name=decoupled_adamw
    f2 f2-plain model.compile=false model.attn_backend=auto optimizer.name=decoupled_adamw
    touch "$W/f2.done"
    export CUDA_VISIBLE_DEVICES=2
    timeout 150 $PY benchmarks/train_throughput.py --variants fast-layers --micro-batch 8 --steps 30 \
      --out "$OUT/train-mb8.json" > "$OUT/train-mb8.log" 2>&1; echo "train-mb8 exit $?" >> "$OUT/train-mb8.log" ) &
  ( export CUDA_VISIBLE_DEVICES=3
    while [ ! -f "$W/f2.done" ]; do sleep 3; done  # after the FSDP2 runs
    timeout 200 $PY benchmarks/train_throughput.py --variants fast-layers-eagerloss,fast-layers --micro-batch 4 \
      --steps 30 --out "$OUT/train-mb4.json" > "$OUT/train-mb4.log" 2>&1; echo "train-mb4 exit $?" >> "$OUT/train-mb4.log" ) &
  wait
  cp "$W/decode-profile.txt" "$OUT/" 2>/dev/null
  (cd "$W" && tar czf "$OUT/ab.tgz" dec-*.json f2-*.log $(find f2-* -name 'train*.log' -o -name metrics.jsonl) 2>/dev/null)
  tail -n 4 "$OUT"/*.log; grep -h "exit" "$W"/f2-*.log
  (cd "$OUT" && tar czf logs.tgz ./*.log gpus.txt && rm -f ./*.log gpus.txt)  # at most 8 files come back
elif [ "$PHASE" = final ]; then  # 4-GPU host, ~7 minutes
  nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpus.txt"
  prep || { echo "prepare-data failed"; tail -20 "$OUT/prepare.log"; exit 1; }
  if [ "$(nvidia-smi -L | wc -l)" -ge 4 ]; then
    ( export CUDA_VISIBLE_DEVICES=0; losscheck 420 ) &
    ( export CUDA_VISIBLE_DEVICES=1,2; fsdp2_trio ) &
    ( export CUDA_VISIBLE_DEVICES=3; baseline_and_profile ) &
    wait
    tr fsdp4 4 "${FS[@]}" --save-interval 1000ba save_weights_only=true
  else  # a 2-GPU host: the FSDP2 runs first, then the baseline + profile and the loss check side by side
    ( export CUDA_VISIBLE_DEVICES=0,1; fsdp2_trio )
    pack
    ( export CUDA_VISIBLE_DEVICES=0; baseline_and_profile ) &
    ( export CUDA_VISIBLE_DEVICES=1; losscheck "${LOSSCHECK_S:-300}" ) &
    wait
  fi
  pack
  tail -n 4 "$W"/*.log; grep -h " exit " "$W"/*.log
elif [ "$PHASE" = scale ]; then  # 2-GPU host, ~8 minutes: where the FSDP2 step time goes
  nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpus.txt"
  prep || { echo "prepare-data failed"; tail -20 "$OUT/prepare.log"; exit 1; }
  ( export CUDA_VISIBLE_DEVICES=0
    baseline_and_profile                   # 1 GPU, no FSDP: llamactl train, then the kernel profile
    tr one-fsdp 1 "${FS[@]}" --save-interval 1000ba save_weights_only=true ) &  # FSDP2 in one process: no comms
  ( export CUDA_VISIBLE_DEVICES=1; losscheck "${LOSSCHECK_S:-300}" ) &
  wait
  pack
  # FSDP2 on both GPUs under the benchmark (same data, same options): tokens/s per GPU and a profile per rank
  CUDA_VISIBLE_DEVICES=0,1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True timeout 150 $PY -m torch.distributed.run --nproc_per_node 2 benchmarks/train_throughput.py \
      --single fast-layers:24 --micro-batch 4 --data "$W/c4_small" --split train_small --profile fast-layers \
      --extra fsdp_config.state_dict_type=sharded > "$W/tt-fsdp2.log" 2>&1; echo "tt-fsdp2 exit $?" >> "$W/tt-fsdp2.log"
  pack
  ( export CUDA_VISIBLE_DEVICES=0,1   # bf16 gradient reduce-scatter instead of fp32 (Composer's PURE)
    tr fsdp2-pure 2 "${FS[@]}" --save-interval 1000ba save_weights_only=true fsdp_config.mixed_precision=PURE )
  pack
  grep -h "RESULT\|profile of" "$W"/tt-fsdp2.log | cut -c1-400; grep -h " exit " "$W"/*.log
elif [ "$PHASE" = scale-tuned ]; then  # 2-GPU host, ~6 minutes: FSDP2 with less traffic, and micro-batch 8
  nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpus.txt"
  nvidia-smi topo -m >> "$OUT/gpus.txt" 2>&1
  prep || { echo "prepare-data failed"; tail -20 "$OUT/prepare.log"; exit 1; }
  MB8=(global_train_batch_size=8 device_train_microbatch_size=8)
  TUNED=(fsdp_config.reshard_after_forward=false fsdp_config.mixed_precision=PURE)
  W1=(--save-interval 1000ba save_weights_only=true)
  CUDA_VISIBLE_DEVICES=0 tr one-mb8 1 "${W1[@]}" "${MB8[@]}"
  export CUDA_VISIBLE_DEVICES=0,1
  tr fsdp2-mb8 2 "${FS[@]}" "${W1[@]}" global_train_batch_size=16 device_train_microbatch_size=8
  pack
  tr fsdp2-mb8-tuned 2 "${FS[@]}" "${W1[@]}" global_train_batch_size=16 device_train_microbatch_size=8 "${TUNED[@]}"
  pack
  tr fsdp2-tuned 2 "${FS[@]}" "${W1[@]}" "${TUNED[@]}"
  pack
  grep -h " exit " "$W"/*.log
elif [ "$PHASE" = fsdp ]; then
  prep || exit 1
  N=$(nvidia-smi -L | wc -l)
  FS=(fsdp_config.state_dict_type=sharded save_num_checkpoints_to_keep=3 --save-interval 15ba --no-sample
      ${FSDP_EXTRA:-})
  run_fsdp() {  # NAME GPUS [overrides...]: 30 steps, micro-batch 4 per GPU, sharded saves at steps 15 and 30
    local name=$1 n=$2; shift 2
    timeout 200 $PY -m llamactl train "${C4[@]}" --gpus "$n" --runs-dir "$W/$name" --duration 30ba "${FS[@]}" \
        global_train_batch_size=$((4 * n)) device_train_microbatch_size=4 "$@" > "$OUT/$name.log" 2>&1
    local rc=$?; echo "$name exit $rc" >> "$OUT/$name.log"; return $rc
  }
  if ! run_fsdp "fsdp$N" "$N"; then  # once more with FSDP1 and the plain options, so scaling is measured at all
    C4+=(model.compile=false model.attn_backend=auto optimizer.name=decoupled_adamw)
    FS+=(fsdp_config.version=1)
    mv "$W/fsdp$N" "$W/fsdp$N-failed"; mv "$OUT/fsdp$N.log" "$W/fsdp$N-failed/launcher.log"
    run_fsdp "fsdp$N" "$N"
  fi
  R=$(ls -d "$W/fsdp$N"/*/ | head -1)
  run_fsdp "fsdp$N-resume" "$N" "load_path=${R}checkpoints/ep0-ba15"
  [ "$N" -gt 2 ] && run_fsdp fsdp2 2
  # the 1-GPU baseline of the same options on this host, for the scaling efficiency
  CUDA_VISIBLE_DEVICES=0 timeout 150 $PY -m llamactl train "${C4[@]}" --runs-dir "$W/one" --duration 30ba \
      --save-interval 1000ba global_train_batch_size=4 device_train_microbatch_size=4 save_weights_only=true \
      --no-sample eval_loader=null > "$OUT/one.log" 2>&1
  echo "one exit $?" >> "$OUT/one.log"
  bundle
  tail -n 3 "$OUT"/fsdp*.log "$OUT/one.log"
fi
