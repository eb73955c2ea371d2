"""Short LoRA fine-tune of SmolLM2-135M-Instruct on CPU through ``llamactl``'s own pipeline.

    PYTHONPATH=. python scripts/lora_smollm2_cpu.py        # 200 chats, 16 steps (about one pass)
    PYTHONPATH=. python scripts/lora_smollm2_cpu.py --steps 4 --batch 2 --examples 32   # quicker

CPU time is dominated by ~12k tokens through a 135M model forward and backward (17 minutes
measured on a busy shared two-core machine; see docs/convert.md for the numbers).

The data are chat examples built from the offline corpora in ../shared/data, and they are what
they say: each user turn is a passage of one or two sentences cut from one of Jane Austen's six
novels (``corpora/austen.jsonl.gz``) with the question "Which Jane Austen novel is this passage
from?"; the assistant turn is the novel's title. Passages are drawn evenly from the six novels;
the validation chats come from chapters never used for training. It is a small, honest
classification task: the base model knows the titles but not which passage is which, so the
loss on the answer tokens falls quickly as it learns the answer format and the title set, and
the held-out loss says whether that carries over to unseen passages.

Every step is the product's: the chats are written as JSON lines and packed by
``llamactl prepare-data chat`` (prompt tokens masked, responses learned, 256-token samples with
document-aware attention); ``llamactl train`` fine-tunes with LoRA from the SmolLM2 folder
(``model.pretrained_model_name_or_path``; the tokenizer comes from that folder because the
config names none); ``llamactl convert`` exports the run as a PEFT
adapter, which is reloaded with stock transformers + PEFT to check the logits. The held-out
answer loss is measured before and after with ``llamactl``'s own chat masking.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
TITLES = {"emma": "Emma", "pride": "Pride and Prejudice", "sense": "Sense and Sensibility",
          "persuasion": "Persuasion", "mansfield": "Mansfield Park", "northanger": "Northanger Abbey"}
QUESTION = "Which Jane Austen novel is this passage from?"
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def _title(book: str) -> str:
    for key, title in TITLES.items():
        if book.lower().startswith(key):
            return title
    raise ValueError(f"unknown book id {book!r}")


def build_examples(corpus: Path, n_train: int, n_eval: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Chat examples (passage -> novel title), balanced over novels; eval chapters are disjoint."""
    rng = random.Random(seed)
    by_book: dict[str, list[tuple[str, str]]] = {}
    with gzip.open(corpus, "rt") as f:
        for line in f:
            rec = json.loads(line)
            by_book.setdefault(_title(rec["book"]), []).append((rec["id"], rec["text"]))

    def passages(chapters: list[tuple[str, str]], k: int) -> list[str]:
        pool = []
        for _, text in chapters:
            sents = [s.strip().replace("\n", " ") for s in _SENT.split(text)]
            sents = [re.sub(r"\s+", " ", s) for s in sents if 40 <= len(s) <= 160 and not s.isupper()]
            pool += [" ".join(sents[i:i + rng.choice((1, 2))]) for i in range(0, len(sents) - 1, 3)]
        pool = [p for p in pool if len(p) <= 160]
        return rng.sample(pool, min(k, len(pool)))

    train, held = [], []
    per_train, per_eval = -(-n_train // len(by_book)), -(-n_eval // len(by_book))
    for title, chapters in sorted(by_book.items()):
        chapters = sorted(chapters)
        rng.shuffle(chapters)
        cut = max(1, len(chapters) // 5)  # 20% of each novel's chapters are held out
        held += [{"passage": p, "title": title} for p in passages(chapters[:cut], per_eval)]
        train += [{"passage": p, "title": title} for p in passages(chapters[cut:], per_train)]
    rng.shuffle(train)
    rng.shuffle(held)
    return train[:n_train], held[:n_eval]


def messages(ex: dict) -> list[dict]:
    # a short system turn replaces SmolLM2's 17-token default one: fewer tokens, faster CPU steps
    return [{"role": "system", "content": "Answer with the title only."},
            {"role": "user", "content": f"{QUESTION}\n\n{ex['passage']}"},
            {"role": "assistant", "content": ex["title"]}]


@torch.no_grad()
def answer_loss(model, tok, chats: list[list[dict]]) -> float:
    """Token-weighted cross-entropy on the assistant tokens only (masks from llamactl's SFT renderer)."""
    from llamactl.data.sft import render_chat

    total, count = 0.0, 0
    model.eval()
    for chat in chats:
        ids, mask = render_chat(tok, chat)
        ids = torch.from_numpy(ids)[None]
        labels = torch.where(torch.from_numpy(mask)[None], ids, torch.full_like(ids, -100))
        n = int((labels[:, 1:] != -100).sum())
        total += float(model(ids, labels=labels).loss) * n
        count += n
    return total / max(1, count)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="Short CPU LoRA fine-tune of SmolLM2-135M, exported with convert.")
    ap.add_argument("--model", default=None, help="SmolLM2 HF folder (default: `llamactl models import smollm2-135m`)")
    ap.add_argument("--examples", type=int, default=200, help="training chats")
    ap.add_argument("--val", type=int, default=36, help="held-out chats")
    ap.add_argument("--steps", type=int, default=16, help="default: about one pass over the chats")
    ap.add_argument("--batch", type=int, default=3, help="packed 256-token samples per step (~4 chats each)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--work", default=str(REPO / "runs" / "lora-smollm2-cpu"), help="data, runs and export go here")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from llamactl.config.load import config_from_dict
    from llamactl.services.convert import ConvertRequest, convert
    from llamactl.services.prepare_data import SFTOptions, prepare_sft
    from llamactl.services.train import train

    torch.manual_seed(args.seed)
    if args.model is None:
        from llamactl.services.models import import_model

        args.model = str(import_model("smollm2-135m").out)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train_ex, val_ex = build_examples(SHARED / "corpora" / "austen.jsonl.gz", args.examples, args.val, args.seed)
    for name, rows in (("train", train_ex), ("val", val_ex)):
        with open(work / f"{name}.jsonl", "w") as f:
            for ex in rows:
                f.write(json.dumps({"messages": messages(ex)}) + "\n")
    print(f"{len(train_ex)} training chats, {len(val_ex)} held out; e.g. {json.dumps(messages(train_ex[0]))[:240]}")

    prep = prepare_sft(SFTOptions(mode="chat", paths=[str(work / "train.jsonl")], val_paths=[str(work / "val.jsonl")],
                                  out=str(work / "data"), tokenizer=args.model, seq_len=256, overwrite=True))
    print("packed:", "; ".join(str(sp) for sp in prep.splits)[:400])

    loader = {"name": "text", "dataset": {"local": str(work / "data"), "split": "train", "shuffle": True}}
    cfg = config_from_dict({
        "run_name": "smollm2-lora-cpu", "runs_dir": str(work / "runs"), "seed": args.seed, "max_seq_len": 256,
        "model": {"pretrained_model_name_or_path": str(Path(args.model).resolve()),
                  "peft_config": {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16,
                                  "lora_dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}},
        "train_loader": loader,
        "optimizer": {"name": "decoupled_adamw", "lr": args.lr, "weight_decay": 0.0},
        "scheduler": {"name": "constant_with_warmup", "t_warmup": "0ba"},
        "max_duration": f"{args.steps}ba",
        "global_train_batch_size": args.batch, "device_train_microbatch_size": args.batch,
        "precision": "fp32", "save_interval": f"{args.steps}ba",
        "log_interval": "1ba",
    })
    from transformers import AutoTokenizer

    from llamactl.interop.sources import load_model

    tok = AutoTokenizer.from_pretrained(args.model)
    val_chats = [messages(ex) for ex in val_ex]
    before = answer_loss(load_model(args.model).model, tok, val_chats)
    t0 = time.perf_counter()
    result = train(cfg, sample=False)
    train_s = time.perf_counter() - t0
    history = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in history if "loss" in r and "eval" not in r]
    k = max(1, min(5, len(losses) // 4))
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k

    adapter = work / "adapter"
    res = convert(ConvertRequest(source=str(result.run_dir), out=adapter, overwrite=True))
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    from llamactl.interop.sources import build_run_model, open_run

    stock = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(args.model, dtype=torch.float32),
                                      str(adapter)).eval()
    ours = build_run_model(open_run(result.run_dir), dtype="fp32").eval()  # our Llama + the run's adapter
    merged = load_model(result.run_dir).model  # what eval/generate get: the adapter merged in
    after = answer_loss(merged, tok, val_chats)
    chat = tok.apply_chat_template(messages(val_ex[0]), tokenize=True)
    ids = torch.tensor([list(getattr(chat, "input_ids", chat))])
    with torch.no_grad():
        diff = (stock(ids).logits - ours(ids).logits).abs().max().item()
        diff_merged = (stock(ids).logits - merged(ids).logits).abs().max().item()
    summary = {"run_dir": str(result.run_dir), "steps": result.steps, "train_seconds": round(train_s, 1),
               f"loss_first{k}": round(first, 4), f"loss_last{k}": round(last, 4), "loss_fell": last < first,
               "heldout_answer_loss_before": round(before, 4), "heldout_answer_loss_after": round(after, 4),
               "adapter": str(adapter), "lora_b_nonzero": res.lora_b_nonzero,
               "stock_peft_vs_ours_max_logit_diff": diff, "stock_peft_vs_our_merged_max_logit_diff": diff_merged}
    print(json.dumps(summary, indent=2, default=str))
    return summary


if __name__ == "__main__":
    sys.exit(0 if main()["loss_fell"] else 1)
