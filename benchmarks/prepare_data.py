#!/usr/bin/env python
"""prepare-data throughput: llamactl vs LLM Foundry's ``convert_dataset_hf``, same input, same machine.

    python benchmarks/prepare_data.py                   # C4-layout fixture from ../shared/data, Llama 3 tokenizer
    python benchmarks/prepare_data.py --repeat 4        # the fixture's train files four times over

Both tools turn the C4 ``en`` train files of ``--source`` into a ``train_small`` split of packed
2,048-token samples with the Llama 3 tokenizer and ``<|end_of_text|>`` after every document
(``--concat_tokens 2048 --eos_text '<|end_of_text|>'``, LLM Foundry's documented C4 recipe).
LLM Foundry reads C4 through ``datasets.load_dataset("allenai/c4", "en", streaming=True)``; here
that call is pointed at the local files (``load_dataset("json", data_files=..., streaming=True)``),
everything else is its own code, at its defaults (``num_workers`` = CPU count).

LLM Foundry 0.22 pins torch<2.7.1 and transformers<4.52, so it is never installed into the project
environment: this script creates a separate venv (default ``~/.cache/llamactl/bench-venv-llmfoundry``)
that sees the project's packages through a ``.pth`` file (torch, transformers, composer, streaming
are shared, never reinstalled) and installs LLM Foundry and the ~30 small packages it imports with
``pip install --no-deps`` from the pin list below. Nothing is dependency-resolved.

Also checked here, since LLM Foundry cannot be installed in the test environment: LLM Foundry's
``StreamingTextDataset`` reads llamactl's output sample for sample, and llamactl's loader reads
LLM Foundry's output. Timings exclude Python start-up and imports (both tools' service call only);
process wall times are printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

# What `import llmfoundry.command_utils.data_prep.convert_dataset_hf` needs on top of the project's
# environment (torch 2.14 / transformers 5 / composer 0.32 / streaming 0.12), found by importing it.
FOUNDRY_PINS = [
    "llm-foundry==0.22.0", "datasets==5.2.0", "pyarrow==26.0.1", "pandas==3.1.1", "dill==0.4.1",
    "multiprocess==0.70.19", "einops==0.8.2", "catalogue==2.0.10", "GitPython==3.2.1", "gitdb==4.0.12",
    "smmap==5.0.3", "setuptools<81", "mlflow-skinny==2.22.5", "protobuf==7.36.2", "opentelemetry-api==1.45.2",
    "opentelemetry-sdk==1.45.2", "opentelemetry-semantic-conventions==0.66b2", "databricks-sdk==0.162.0",
    "google-auth==2.63.0", "pyasn1==0.6.5", "pyasn1_modules==0.4.2", "rsa==4.9.1", "cachetools==8.0.2",
    "cryptography==50.0.2", "cffi==2.1.1", "pycparser==3.12", "sqlparse==0.6.1", "tabulate==0.10.0",
    "tenacity==9.2.1", "beautifulsoup4==4.15.0", "soupsieve==4.1.3",
]

FOUNDRY_HARNESS = r'''
import glob, json, os, sys, time
args = json.loads(sys.argv[1])
import datasets as hf_datasets
import llmfoundry.command_utils.data_prep.convert_dataset_hf as cdh

real_load = hf_datasets.load_dataset
def local_c4(path, name=None, split=None, streaming=False, **kw):
    # The only change: allenai/c4 from the local C4-layout folder instead of the hub.
    assert path == "allenai/c4" and name == "en", (path, name)
    pattern = {"train": "c4-train.*.json.gz", "validation": "c4-validation.*.json.gz"}[split]
    files = sorted(glob.glob(os.path.join(args["source"], "en", pattern)))
    return real_load("json", data_files=files, split="train", streaming=streaming)
cdh.hf_datasets.load_dataset = local_c4

t0 = time.perf_counter()
cdh.convert_dataset_hf(dataset="allenai/c4", data_subset="en", splits=["train_small"], out_root=args["out"],
                       compression=None, concat_tokens=args["seq"], tokenizer=args["tokenizer"], tokenizer_kwargs={},
                       bos_text="", eos_text=args["eos"], no_wrap=False, num_workers=args["workers"])
seconds = time.perf_counter() - t0

import numpy as np, torch
from streaming import StreamingDataset
from transformers import AutoTokenizer
from llmfoundry.data.text_data import StreamingTextDataset
n = StreamingDataset(local=args["out"], split="train_small", batch_size=1).num_samples
# Interop: LLM Foundry's own text dataset reads llamactl's shards, sample for sample.
tok = AutoTokenizer.from_pretrained(args["tokenizer"])
theirs = StreamingTextDataset(tokenizer=tok, max_seq_len=args["seq"], local=args["ours"], split="train_small",
                              batch_size=1)
raw = StreamingDataset(local=args["ours"], split="train_small", batch_size=1)
same = all(torch.equal(theirs[i], torch.from_numpy(raw[i]["tokens"].astype(np.int64))) for i in range(raw.num_samples))
same = bool(same and len(theirs) == raw.num_samples)
print(json.dumps({"seconds": seconds, "samples": n, "reads_llamactl_output": same}))
'''


def ensure_foundry_venv(venv: Path) -> Path:
    """The benchmark venv's python, created on first use (project packages shared through a .pth file)."""
    py = venv / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", "import llmfoundry.command_utils.data_prep.convert_dataset_hf"],
                                      capture_output=True).returncode == 0:
        return py
    print(f"creating {venv} (LLM Foundry 0.22 and what it imports; --no-deps, torch untouched) ...", flush=True)
    base = Path(sys.base_prefix) / "bin" / "python3"
    subprocess.run([str(base), "-m", "venv", str(venv)], check=True)
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    import sysconfig

    # The project's site-packages come after the venv's own: torch & co. are shared, never reinstalled.
    Path(purelib, "llamactl-project-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", *FOUNDRY_PINS], check=True)
    subprocess.run([str(py), "-c", "import llmfoundry.command_utils.data_prep.convert_dataset_hf"], check=True)
    return py


def make_input(source: Path, repeat: int, where: Path) -> Path:
    """A C4-layout folder holding the source's train files ``repeat`` times (symlinks)."""
    files = sorted((source / "en").glob("c4-train.*.json.gz"))
    if not files:
        sys.exit(f"no en/c4-train.*.json.gz under {source}")
    (where / "en").mkdir(parents=True)
    n = len(files) * repeat
    for i in range(n):
        (where / "en" / f"c4-train.{i:05d}-of-{n:05d}.json.gz").symlink_to(files[i % len(files)].resolve())
    return where


def run_llamactl(src: Path, out: Path, args) -> dict:
    cmd = [sys.executable, "-m", "llamactl", "prepare-data", "c4", "--source", str(src), "--out", str(out),
           "--tokenizer", str(args.tokenizer), "--split", "train_small", "--train-samples", "0",
           "--concat-tokens", str(args.concat_tokens), "--eos-text", args.eos_text, "--json"]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"llamactl failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout)
    split = res["splits"][0]
    return {"seconds": res["seconds"], "samples": split["num_samples"], "wall": wall}


def run_foundry(py: Path, src: Path, out: Path, ours: Path, args) -> dict:
    spec = {"source": str(src), "out": str(out), "seq": args.concat_tokens, "tokenizer": str(args.tokenizer),
            "eos": args.eos_text, "workers": args.workers, "ours": str(ours)}
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(FOUNDRY_HARNESS)
    t0 = time.perf_counter()
    proc = subprocess.run([str(py), f.name, json.dumps(spec)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    wall = time.perf_counter() - t0
    os.unlink(f.name)
    if proc.returncode:
        sys.exit(f"LLM Foundry failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**res, "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, default=SHARED / "c4-format", help="C4-layout folder (en/c4-train.*)")
    ap.add_argument("--tokenizer", type=Path, default=SHARED / "tokenizers" / "llama3")
    ap.add_argument("--eos-text", default="<|end_of_text|>")
    ap.add_argument("--concat-tokens", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=2, help="use the source's train files this many times")
    ap.add_argument("--workers", type=int, default=None, help="both tools' worker count (default: their own)")
    ap.add_argument("--rounds", type=int, default=2, help="best of this many runs per tool (the machine is shared)")
    ap.add_argument("--venv", type=Path, default=Path.home() / ".cache" / "llamactl" / "bench-venv-llmfoundry")
    args = ap.parse_args()

    py = ensure_foundry_venv(args.venv)
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        tmp = Path(tmp)
        src = make_input(args.source, args.repeat, tmp / "c4")
        ours, theirs = [], []
        for r in range(args.rounds):
            for d in ("ours", "theirs"):
                shutil.rmtree(tmp / d, ignore_errors=True)
            ours.append(run_llamactl(src, tmp / "ours", args))
            theirs.append(run_foundry(py, src, tmp / "theirs", tmp / "ours", args))
            print(f"round {r + 1}: llamactl {ours[-1]['seconds']:.1f}s, LLM Foundry {theirs[-1]['seconds']:.1f}s",
                  flush=True)
        # Interop the other way: our loader reads LLM Foundry's shards.
        sys.path.insert(0, str(REPO))
        from llamactl.data.loaders import build_lm_dataloader

        dl = build_lm_dataloader(data_dir=tmp / "theirs", split="train_small", micro_batch_size=8,
                                 max_seq_len=args.concat_tokens, shuffle=False, seed=0, drop_last=False)
        read_theirs = sum(b["input_ids"].shape[0] for b in dl) == theirs[-1]["samples"]

    a = min(ours, key=lambda x: x["seconds"])
    b = min(theirs, key=lambda x: x["seconds"])
    tok_a = a["samples"] * args.concat_tokens / a["seconds"]
    tok_b = b["samples"] * args.concat_tokens / b["seconds"]
    cpus = len(os.sched_getaffinity(0))
    print(f"\nmachine: {platform.processor() or platform.machine()}, {cpus} CPU cores; "
          f"{time.strftime('%Y-%m-%d')}; input {args.repeat} x {args.source}/en/c4-train.*; "
          f"tokenizer {args.tokenizer.name}; {args.concat_tokens}-token samples")
    print(f"{'tool':<34}{'samples':>9}{'seconds':>9}{'tokens/s':>12}{'wall s':>8}")
    print(f"{'llamactl prepare-data c4':<34}{a['samples']:>9}{a['seconds']:>9.1f}{tok_a:>12,.0f}{a['wall']:>8.1f}")
    print(f"{'LLM Foundry convert_dataset_hf':<34}{b['samples']:>9}{b['seconds']:>9.1f}{tok_b:>12,.0f}"
          f"{b['wall']:>8.1f}")
    print(f"ratio (tokens/s): {tok_a / tok_b:.2f}x")
    print(f"LLM Foundry StreamingTextDataset reads llamactl's shards exactly: {b['reads_llamactl_output']}")
    print(f"llamactl's loader reads LLM Foundry's shards: {read_theirs}")


if __name__ == "__main__":
    main()
