"""Decode throughput: llamactl's generate (eager, CUDA graph, torch.compile) vs transformers' generate.

Same random-init weights in both (a preset shape, default the Llama-3.2-1B shape in bf16; no hub
access needed), same prompts (random ids, equal lengths), greedy, a fixed number of new tokens
(EOS ignored), after a warm-up run. Beside the speeds: the memory-bandwidth bound of a decode step,
i.e. (bytes of weights + bytes of KV cache read per step) / (device copy bandwidth measured here).

GPU (one command):
    PYTHONPATH=. python benchmarks/generate.py --out benchmarks/results/generate-h100.json
CPU smoke run (seconds):
    PYTHONPATH=. python benchmarks/generate.py --device cpu --preset tiny --new-tokens 16 --batch-sizes 1,2

Imports torch, transformers and llamactl's model/interop/generation only (never Composer).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llamactl.generation import Generator, SamplingConfig  # noqa: E402
from llamactl.interop.hf import llamactl_state_dict_to_hf, to_transformers_config  # noqa: E402
from llamactl.generation.engine import DEFAULT_COMPILE_OPTIONS  # noqa: E402
from llamactl.model.llama import DECODE_ATTENTION, Llama, set_decode_attention  # noqa: E402
from llamactl.model.presets import preset  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# benchmark mode -> Inductor options of Generator(mode="compile"); "compile-plain" is compile untuned
COMPILE_VARIANTS = {"compile": DEFAULT_COMPILE_OPTIONS,
                    "compile-autotune": {**DEFAULT_COMPILE_OPTIONS, "max_autotune": True},
                    "compile-plain": {}}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, nbytes: int, iters: int = 20) -> float:
    """Device memory bandwidth in bytes/s from a large device-to-device copy (read + write)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        dst.copy_(src)
    sync(device)
    dt = time.perf_counter() - t0
    return 2 * src.numel() * 4 * iters / dt


def build_models(name: str, device: torch.device, dtype: torch.dtype, seed: int, with_hf: bool):
    cfg = preset(name)
    with torch.device("meta"):
        ours = Llama(cfg)
    ours.to_empty(device=device)
    ours.tie_weights()  # to_empty gives the tied head its own (empty) tensor
    ours.init_weights(seed)
    ours.to(dtype).eval()
    hf = None
    if with_hf:
        from transformers import LlamaForCausalLM

        hcfg = to_transformers_config(cfg)
        with torch.device(device):  # built on the device so rotary buffers are real (not meta)
            hf = LlamaForCausalLM(hcfg)
        state = llamactl_state_dict_to_hf(ours.state_dict(), cfg)
        if cfg.tie_word_embeddings:
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
        hf.to(dtype)
        hf.load_state_dict(state, strict=True)
        hf.eval()
    return cfg, ours, hf


def check_logits(ours: Llama, hf, ids: torch.Tensor) -> float:
    with torch.no_grad():
        a = ours(ids).logits.float()
        b = hf(ids).logits.float()
    return float((a - b).abs().max())


def time_runs(fn, repeats: int, device: torch.device) -> list[float]:
    out = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def profile_decode(gen: Generator, cfg, device: torch.device, path: Path, steps: int = 32) -> None:
    """Top GPU kernels (total time, calls, share) of ``steps`` batch-1 decode steps."""
    from torch.profiler import ProfilerActivity, profile

    prompt = [list(range(1, 33))]
    sc = SamplingConfig(max_new_tokens=steps, ignore_eos=True)
    gen.generate(prompt, sc)  # the batch-1 graph exists before the profiled run
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        gen.generate(prompt, sc)
        sync(device)
    # kernels only: an eager op (argmax, the prefill's matmuls) also reports its kernels' time
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA" and e.self_device_time_total > 0]
    total = sum(e.self_device_time_total for e in events)
    lines = [f"{gen.mode} decode, batch 1, {steps} steps: {total / 1000:.2f} ms of kernels "
             f"({total / steps:.1f} us per step), {sum(e.count for e in events)} kernel launches "
             f"({sum(e.count for e in events) / steps:.1f} per step, {cfg.num_hidden_layers} layers)",
             f"{'us/step':>9} {'share':>6} {'calls/step':>10}  kernel"]
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:40]:
        lines.append(f"{e.self_device_time_total / steps:>9.1f} {100 * e.self_device_time_total / total:>5.1f}% "
                     f"{e.count / steps:>10.1f}  {e.key[:140]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:25]), flush=True)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="llama-3.2-1b")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="bf16 (GPU default), fp16 or fp32 (CPU default)")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--modes", default=None, help="ours: eager,graph,compile,compile-autotune,compile-plain "
                                                   "(GPU default eager,graph,compile; CPU eager)")
    ap.add_argument("--no-fuse", action="store_true", help="keep q/k/v and gate/up as separate matmuls")
    ap.add_argument("--decode-attention", default="sdpa-gqa", choices=DECODE_ATTENTION,
                    help="how a decode query attends over the cache (llamactl.model.llama.set_decode_attention)")
    ap.add_argument("--profile", default=None, metavar="FILE",
                    help="write the top GPU kernels of 32 batch-1 decode steps of the last mode to FILE")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers' generate")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hf-repeats", type=int, default=2, help="timed runs of transformers' generate (it is slow)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    modes = (args.modes or ("eager,graph,compile" if device.type == "cuda" else "eager")).split(",")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    torch.manual_seed(args.seed)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"

    cfg, ours, hf = build_models(args.preset, device, dtype, args.seed, not args.no_hf)
    fuse = not args.no_fuse
    set_decode_attention(args.decode_attention)
    elt = torch.finfo(dtype).bits // 8
    weight_bytes = cfg.num_params() * elt
    bw = copy_bandwidth(device, nbytes=(1 << 30) if device.type == "cuda" else (1 << 28))
    probe = torch.randint(0, cfg.vocab_size, (1, 16), device=device)
    logits_diff = check_logits(ours, hf, probe) if hf is not None else None

    result = {"card": card, "device": str(device), "dtype": str(dtype).replace("torch.", ""), "preset": args.preset,
              "params": cfg.num_params(), "weight_bytes": weight_bytes, "copy_bandwidth_GBps": bw / 1e9,
              "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "repeats": args.repeats,
              "torch": torch.__version__, "logits_max_abs_diff_vs_hf": logits_diff,
              "date": datetime.now().isoformat(timespec="seconds"), "fuse_projections": fuse,
              "decode_attention": args.decode_attention, "runs": []}
    try:
        import transformers

        result["transformers"] = transformers.__version__
    except ImportError:
        pass
    print(f"{card} · {args.preset} {result['dtype']} · {cfg.num_params() / 1e9:.3f} B params · copy bandwidth "
          f"{bw / 1e9:.0f} GB/s · max |logits ours - HF| {logits_diff}", flush=True)

    n = args.new_tokens
    gen = None
    for b in batch_sizes:
        prompts = torch.randint(0, cfg.vocab_size, (b, args.prompt_len), generator=torch.Generator().manual_seed(b))
        avg_ctx = args.prompt_len + n / 2
        kv_bytes = 2 * cfg.num_hidden_layers * b * cfg.num_key_value_heads * cfg.head_dim * avg_ctx * elt
        bound = b * bw / (weight_bytes + kv_bytes)  # tokens/s over the batch
        rows = []
        ref_tokens = None
        if hf is not None:
            ids = prompts.to(device)
            am = torch.ones_like(ids)

            def hf_run(k: int = n):
                with torch.no_grad():
                    return hf.generate(ids, attention_mask=am, max_new_tokens=k, min_new_tokens=k, do_sample=False,
                                       pad_token_id=0, temperature=None, top_p=None, top_k=None)

            hf_run(8)  # warm-up
            hf_out: list = []
            times = time_runs(lambda: hf_out.append(hf_run()), args.hf_repeats, device)
            out = hf_out[-1]
            ref_tokens = out[:, args.prompt_len:].tolist()
            rows.append(("hf generate", times, None))
        for mode in modes:
            try:
                if mode in COMPILE_VARIANTS:
                    gen = Generator(ours, mode="compile", compile_options=COMPILE_VARIANTS[mode], fuse=fuse)
                else:
                    gen = Generator(ours, mode=mode, fuse=fuse)  # type: ignore[arg-type]
                sc = SamplingConfig(max_new_tokens=n, ignore_eos=True)
                plist = prompts.tolist()
                t0 = time.perf_counter()
                gen.generate(plist, SamplingConfig(max_new_tokens=n, ignore_eos=True))  # warm-up (+ capture/compile)
                warm = time.perf_counter() - t0
                outs = []
                times = time_runs(lambda: outs.append(gen.generate(plist, sc)), args.repeats, device)
                o = outs[-1]
                agree = None
                if ref_tokens is not None:
                    same = [next((j for j, (x, y) in enumerate(zip(r, t)) if x != y), len(r))
                            for r, t in zip(ref_tokens, o.tokens)]
                    agree = min(same)
                rows.append((f"llamactl {mode}", times, {"warmup_s": warm, "prefill_s": o.prefill_s,
                                                         "decode_s": o.decode_s, "first_divergence_vs_hf": agree}))
            except Exception as e:  # noqa: BLE001 - one failing mode must not hide the others
                print(f"  {mode}: FAILED {type(e).__name__}: {e}", flush=True)
                result["runs"].append({"impl": f"llamactl {mode}", "batch": b, "error": f"{type(e).__name__}: {e}"})
        hf_tps = None
        print(f"\nbatch {b}: prompt {args.prompt_len}, {n} new tokens; bandwidth bound {bound:,.0f} tokens/s")
        print(f"  {'implementation':<20}{'tokens/s':>12}{'ms/token':>10}{'% bound':>9}{'vs HF':>8}")
        for impl, times, extra in rows:
            best = min(times)
            tps = b * n / best
            if impl == "hf generate":
                hf_tps = tps
            ratio = tps / hf_tps if hf_tps else None
            rec = {"impl": impl, "batch": b, "tokens_per_s": tps, "ms_per_token": 1000 * best / n,
                   "seconds": times, "median_s": statistics.median(times), "bound_tokens_per_s": bound,
                   "pct_of_bound": 100 * tps / bound, "vs_hf": ratio}
            if extra:
                rec.update(extra)
                rec["decode_tokens_per_s"] = b * (n - 1) / extra["decode_s"] if extra["decode_s"] else None
            result["runs"].append(rec)
            print(f"  {impl:<20}{tps:>12,.1f}{rec['ms_per_token']:>10.2f}{rec['pct_of_bound']:>8.1f}%"
                  f"{(f'{ratio:.1f}x' if ratio else '–'):>8}", flush=True)

    if args.profile and gen is not None:
        profile_decode(gen, cfg, device, Path(args.profile))

    slug = re.sub(r"[^a-z0-9]+", "-", card.lower()).strip("-") or "cpu"
    out = Path(args.out or f"benchmarks/results/generate-{slug}-{datetime.now():%Y%m%d}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
