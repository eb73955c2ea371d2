"""Training throughput, side by side, through the real `llamactl train` code path.

Each variant builds its Trainer with ``llamactl.training.trainer.build_trainer`` (what the CLI
does) from one config with different overrides, fits N steps on the same packed MDS data, and
reports steady-state tokens/s, MFU, peak memory and the ratio to the first variant:

    (hf)    stock transformers LlamaForCausalLM under Composer (model.impl=hf)
    (eager) llamactl's Llama, no speed options
    (fast)  llamactl's Llama with every speed option (compiled layers, cuDNN attention, fused AdamW)

    python benchmarks/train_throughput.py --preset llama-3.2-1b --seq 2048 --micro-batch 4 --steps 30

``--loss-check N`` also trains hf and eager N steps from the same initial weights and data and
reports how far their losses drift apart (bf16 noise, not a bug, if small). Results are printed
as a table and written as JSON (``--out``) with the card and the date, for docs/performance.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = {
    "hf": ["model.impl=hf", "optimizer.name=decoupled_adamw"],
    "eager": ["model.impl=custom", "optimizer.name=decoupled_adamw"],
    "eager-c1k": ["model.impl=custom", "optimizer.name=decoupled_adamw", "model.loss_chunk_size=1024"],
    "fast": ["model.impl=custom", "model.compile=model", "model.attn_backend=cudnn", "optimizer.name=adamw",
             "optimizer.fused=true"],
    "fast-layers": ["model.impl=custom", "model.compile=layers", "model.attn_backend=cudnn", "optimizer.name=adamw",
                    "optimizer.fused=true"],
    "fast-layers-eagerloss": ["model.impl=custom", "model.compile=layers", "model.compile_loss=false",
                              "model.attn_backend=cudnn", "optimizer.name=adamw", "optimizer.fused=true"],
    "fast-layers-selective": ["model.impl=custom", "model.compile=layers", "model.attn_backend=cudnn",
                              "optimizer.name=adamw", "optimizer.fused=true",
                              "model.activation_checkpointing=selective"],
    "fast-flash": ["model.impl=custom", "model.compile=true", "model.attn_backend=flash", "optimizer.name=adamw",
                   "optimizer.fused=true"],
    "hf-compile": ["model.impl=hf", "model.compile=true", "optimizer.name=adamw", "optimizer.fused=true"],
}


def write_random_mds(folder: Path, *, vocab: int, seq: int, samples: int, seed: int = 0) -> Path:
    """Packed samples of random token ids, in LLM Foundry's MDS ``tokens`` layout."""
    from streaming import MDSWriter

    split = folder / "train"
    if (split / "index.json").exists():
        return folder
    rng = np.random.default_rng(seed)
    with MDSWriter(out=str(split), columns={"tokens": "ndarray:int32"}, size_limit="256mb") as w:
        for _ in range(samples):
            w.write({"tokens": rng.integers(0, vocab, size=seq, dtype=np.int32)})
    return folder


def base_config(args, data_dir: Path, runs: Path) -> dict:
    return {
        "run_name": "bench", "seed": 17, "max_seq_len": args.seq, "runs_dir": str(runs),
        "model": {"preset": args.preset},
        "tokenizer": {"name": args.tokenizer},
        "train_loader": {"name": "text", "dataset": {"local": str(data_dir), "split": args.split, "shuffle": False,
                                                     "max_seq_len": args.seq}, "num_workers": 2},
        "optimizer": {"lr": 3e-4, "betas": [0.9, 0.95], "weight_decay": 0.0},
        "scheduler": {"name": "constant_with_warmup", "t_warmup": "0ba"},
        "algorithms": {"gradient_clipping": {"clipping_type": "norm", "clipping_threshold": 1.0}},
        "precision": "amp_bf16" if torch.cuda.is_available() else "fp32",
        "global_train_batch_size": args.micro_batch * args.accum * world_size(),
        "device_train_microbatch_size": args.micro_batch,
        "save_interval": "100000ba", "eval_interval": "100000ba", "log_interval": "1ba",
    }


def world_size() -> int:
    """Processes of this run: > 1 when a variant runs under ``torchrun`` (``--single`` with FSDP)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def profile_callback(start: int, steps: int, out: Path):
    """A Composer callback: torch.profiler over a few steady-state steps; prints the top CUDA kernels."""
    from composer.core import Callback
    from torch.profiler import ProfilerActivity, profile

    class ProfileSteps(Callback):
        def __init__(self) -> None:
            self.prof = None

        def batch_start(self, state, logger) -> None:
            if int(state.timestamp.batch.value) == start and self.prof is None:
                self.prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
                self.prof.__enter__()

        def batch_end(self, state, logger) -> None:
            if self.prof is None or int(state.timestamp.batch.value) != start + steps:
                return
            torch.cuda.synchronize()
            self.prof.__exit__(None, None, None)
            rows = [e for e in self.prof.key_averages() if e.device_time_total > 0 and e.device_type.name == "CUDA"]
            total = sum(e.device_time_total for e in rows)
            rows.sort(key=lambda e: e.device_time_total, reverse=True)
            lines = [f"profile of {steps} steps: GPU kernel time {total / 1e3 / steps:.1f} ms/step"]
            for e in rows[:20]:
                lines.append(f"{e.device_time_total / total:6.1%}  {e.device_time_total / 1e3 / steps:8.2f} ms/step"
                             f"  x{e.count // steps:<4} {e.key[:110]}")
            text = "\n".join(lines)
            if rank() == 0:
                print(text, flush=True)
            out.write_text(text + "\n")
            self.prof = None

    return ProfileSteps()


def run_variant(name: str, overrides: list[str], args, data_dir: Path, runs: Path, steps: int) -> dict:
    from llamactl.config.load import build, load_yaml_dict  # noqa: F401
    from llamactl.config.schema import TrainConfig
    from llamactl.runs import new_run_dir
    from llamactl.training.trainer import build_trainer

    import yaml

    runs.mkdir(parents=True, exist_ok=True)
    cfg_path = runs / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(base_config(args, data_dir, runs)))
    data = load_yaml_dict(cfg_path, [*overrides, f"max_duration={steps}ba", *args.extra])
    cfg = build(TrainConfig, data, "")
    world = world_size()
    if world > 1:  # join the process group first, then one run directory for every rank, as `llamactl train --gpus`
        from llamactl.services.train import _init_process_group

        _init_process_group(cfg.dist_timeout)
        run_dir = runs / f"bench-{name}-{world}gpus"
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_dir = new_run_dir(runs, f"bench-{name}")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    extra = []
    if args.profile and name == args.profile and torch.cuda.is_available():
        out_dir = Path(os.environ.get("OUT", REPO / "benchmarks" / "results"))
        tag = f"-{world}gpus-rank{rank()}" if world > 1 else ""
        extra.append(profile_callback(start=steps - 4, steps=3,
                                      out=out_dir / f"profile-{name}-mb{args.micro_batch}{tag}.txt"))
    built = build_trainer(cfg, run_dir, extra_callbacks=extra)
    built.trainer.fit()
    wall = time.perf_counter() - t0
    hist = built.recorder.history
    built.trainer.close()
    warm = min(len(hist) - 1, max(args.warmup, len(hist) // 4))
    # the profiled steps (the last four) are slowed by the profiler: keep them out of the speed
    steady = hist[warm:len(hist) - 5] if extra and len(hist) - 5 > warm else hist[warm:]
    # tokens/s over the steady window from the recorder's step timestamps
    tps = (steady[-1]["tokens"] - hist[warm - 1]["tokens"]) / (steady[-1]["elapsed_s"] - hist[warm - 1]["elapsed_s"])
    flops_tok = built.llama.config.flops_per_token(args.seq)
    from llamactl.training.callbacks import peak_flops

    peak = peak_flops(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
    import shutil

    if rank() == 0:
        shutil.rmtree(run_dir, ignore_errors=True)  # a 1B checkpoint is 9 GB; the next variant needs the disk
    res = {
        "variant": name, "overrides": overrides, "steps": len(hist), "micro_batch": args.micro_batch,
        "seq": args.seq, "gpus": world, "tokens_per_s": round(tps, 1), "tokens_per_s_per_gpu": round(tps / world, 1),
        "mfu": round(tps / world * flops_tok / peak, 4) if peak else None,
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        "wall_s": round(wall, 1), "losses": [round(h["loss"], 5) for h in hist],
    }
    del built
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="llama-3.2-1b")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--variants", default="hf,eager,fast")
    ap.add_argument("--tokenizer", default=str(REPO / ".bench" / "llama3"),
                    help="a tokenizer folder whose vocab fits the preset")
    ap.add_argument("--loss-check", type=int, default=0, help="also compare losses over N steps (see below)")
    ap.add_argument("--loss-check-variants", default="hf,eager",
                    help="the variants whose N-step losses are compared with the first one's")
    ap.add_argument("--data-dir", default=None,
                    help="a prepared MDS folder (e.g. from `llamactl prepare-data c4`) instead of random tokens")
    ap.add_argument("--split", default="train", help="the split of --data-dir to read")
    ap.add_argument("--extra", nargs="*", default=[], help="extra key=value overrides for every variant")
    ap.add_argument("--out", default=None)
    ap.add_argument("--profile", default=None, help="profile this variant's last steps (top CUDA kernels)")
    ap.add_argument("--single", default=None, metavar="NAME:STEPS",
                    help="run one variant in this process and print its RESULT json (with --data); under "
                         "torchrun with --extra fsdp_config.* this measures FSDP on N GPUs")
    ap.add_argument("--data", default=None, help="with --single: the MDS folder to train on (its --split)")
    args = ap.parse_args()

    from llamactl.model.presets import preset

    vocab = preset(args.preset).vocab_size
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    if args.single:  # one variant in this process (a child, or a torchrun rank), result as the last line of stdout
        name, _, steps = args.single.partition(":")
        if name not in VARIANTS or not steps.isdigit():
            ap.error(f"--single takes NAME:STEPS with NAME one of {', '.join(VARIANTS)}, e.g. fast-layers:24")
        if not args.data:
            ap.error("--single needs --data, a folder of packed MDS samples (e.g. from llamactl prepare-data)")
        runs = Path(os.environ.get("LLAMACTL_BENCH_RUNS") or Path(args.data).parent / "runs")
        r = run_variant(name, VARIANTS[name], args, Path(args.data), runs, int(steps))
        if rank() == 0:
            print("RESULT " + json.dumps(r), flush=True)
        return
    work = Path(tempfile.mkdtemp(prefix="llamactl-bench-"))
    samples = max(args.steps, args.loss_check) * args.micro_batch * args.accum + 64
    if args.data_dir:
        data_dir = Path(args.data_dir).resolve()
    else:
        args.split = "train"
        data_dir = write_random_mds(work / "data", vocab=vocab, seq=args.seq, samples=samples)

    def child(name: str, steps: int) -> dict:
        """Each variant in a fresh process: Composer keeps references to a finished Trainer, so a
        second variant in the same process would inherit the first one's GPU memory."""
        import subprocess

        cmd = [sys.executable, __file__, *sys.argv[1:], "--single", f"{name}:{steps}", "--data", str(data_dir)]
        env = {**os.environ, "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF",
                                                                        "expandable_segments:True"),
               "LLAMACTL_BENCH_RUNS": str(work / "runs")}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        for ln in proc.stdout.splitlines():
            if ln.startswith(("profile of", " ")) and "%" in ln or ln.startswith("profile of"):
                print(ln, flush=True)
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
            print(f"{name}: FAILED\n" + "\n".join(tail), flush=True)
            return {"variant": name, "failed": True, "tokens_per_s": 0.0, "mfu": None, "peak_mem_gib": None,
                    "wall_s": None, "losses": []}
        return json.loads(lines[-1][len("RESULT "):])

    results = []
    for name in [v for v in args.variants.split(",") if v]:
        r = child(name, args.steps)
        results.append(r)
        print(f"{name:>10}: {r['tokens_per_s']:>10,.0f} tok/s  MFU {r['mfu'] or 0:.1%}  "
              f"peak {r['peak_mem_gib']} GiB  ({r['wall_s']} s)", flush=True)
    loss_check = None
    if args.loss_check:
        names = args.loss_check_variants.split(",")
        curves = {name: child(name, args.loss_check)["losses"] for name in names}
        ref = curves[names[0]]
        loss_check = {"steps": args.loss_check, "data": str(args.data_dir or "random tokens"), "reference": names[0],
                      "curves": curves, "vs_reference": {}}
        for name in names[1:]:
            diffs = [abs(x - y) for x, y in zip(ref, curves[name])]
            if not diffs:
                continue
            loss_check["vs_reference"][name] = {
                "first_last": [curves[name][0], curves[name][-1]], "reference_first_last": [ref[0], ref[-1]],
                "max_abs_diff": round(max(diffs), 5), "mean_abs_diff": round(statistics.mean(diffs), 5),
                "mean_abs_diff_last_50": round(statistics.mean(diffs[-50:]), 5),
                "mean_last_20": round(statistics.mean(curves[name][-20:]), 5),
                "reference_mean_last_20": round(statistics.mean(ref[-20:]), 5)}
        print("loss check:", json.dumps(loss_check["vs_reference"]), flush=True)
    if not results:
        out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"losscheck-{date.today()}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"card": card, "date": str(date.today()), "torch": torch.__version__,
                                   "preset": args.preset, "seq": args.seq, "micro_batch": args.micro_batch,
                                   "loss_check": loss_check}, indent=2))
        print("wrote", out)
        return
    base = results[0]["tokens_per_s"] or 1.0
    print(f"\n{card}, {args.preset}, seq {args.seq}, micro-batch {args.micro_batch}, {date.today()}")
    print(f"{'variant':>10} {'tokens/s':>12} {'MFU':>7} {'peak GiB':>9} {'vs ' + results[0]['variant']:>8}")
    for r in results:
        print(f"{r['variant']:>10} {r['tokens_per_s']:>12,.0f} {(r['mfu'] or 0):>7.1%} {r['peak_mem_gib'] or 0:>9} "
              f"{r['tokens_per_s'] / base:>8.2f}x")
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / \
        f"train-{card.replace(' ', '_')}-{args.preset}-mb{args.micro_batch}-{date.today()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"card": card, "date": str(date.today()), "torch": torch.__version__,
                               "preset": args.preset, "seq": args.seq, "micro_batch": args.micro_batch,
                               "results": results, "loss_check": loss_check}, indent=2))
    print("wrote", out)


if __name__ == "__main__":
    main()
