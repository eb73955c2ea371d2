"""Short LoRA fine-tune of SmolLM2-135M-Instruct on CPU, then export it with ``llamactl convert``.

    PYTHONPATH=. python scripts/lora_smollm2_cpu.py             # 192 chats, 24 steps: ~2-3 min, 2 cores
    PYTHONPATH=. python scripts/lora_smollm2_cpu.py --eval 60   # also held-out accuracy before/after

The data are chat examples built from the offline corpora in ../shared/data, and they are what
they say: each user turn is a passage of one or two sentences cut from one of Jane Austen's six
novels (``corpora/austen.jsonl.gz``) with the question "Which Jane Austen novel is this passage
from?"; the assistant turn is the novel's title. Passages are drawn evenly from the six novels;
held-out passages come from chapters never used for training. It is a small, honest
classification task: the base model already knows the titles but not which passage is which,
so the loss on the answer tokens falls quickly and held-out accuracy (scored by comparing the
model's likelihood of the six titles) shows whether anything real was learned.

Training uses the real pieces of ``llamactl train``: the model is loaded with
``llamactl.interop.sources.load_model``, wrapped by ``LlamactlComposerModel`` (LoRA through PEFT,
as ``peft_config`` in a train YAML does) and fitted by a Composer ``Trainer`` that writes a real
checkpoint into a run directory with a ``config.yaml``. The run is then exported with
``llamactl.services.convert`` to a PEFT adapter folder and reloaded with stock transformers +
PEFT to check the logits. Loss on prompt tokens is masked (-100): only the answer is learned.
"""

from __future__ import annotations

import argparse
import dataclasses
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
            sents = [re.sub(r"\s+", " ", s) for s in sents if 40 <= len(s) <= 200 and not s.isupper()]
            pool += [" ".join(sents[i:i + rng.choice((1, 2))]) for i in range(0, len(sents) - 1, 3)]
        pool = [p for p in pool if len(p) <= 200]
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


def encode(tokenizer, ex: dict) -> dict[str, list[int]]:
    """input_ids of the whole chat; labels = -100 on the prompt, the answer (+ <|im_end|>) kept."""
    prompt = tokenizer.apply_chat_template(messages(ex)[:-1], add_generation_prompt=True, tokenize=True)
    full = tokenizer.apply_chat_template(messages(ex), tokenize=True)
    prompt, full = list(getattr(prompt, "input_ids", prompt)), list(getattr(full, "input_ids", full))
    assert full[:len(prompt)] == prompt, "chat template is not prefix-stable"
    end = full.index(tokenizer.convert_tokens_to_ids("<|im_end|>"), len(prompt)) + 1
    full = full[:end]  # drop the trailing newline after <|im_end|>
    return {"input_ids": full, "labels": [-100] * len(prompt) + full[len(prompt):]}


def collate(batch: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row; padding is never a target (causal attention ignores it)."""
    t = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), t), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), t), -100, dtype=torch.long)
    for i, b in enumerate(batch):
        ids[i, :len(b["input_ids"])] = torch.tensor(b["input_ids"])
        labels[i, :len(b["labels"])] = torch.tensor(b["labels"])
    return {"input_ids": ids, "labels": labels}


@torch.no_grad()
def accuracy(model, tokenizer, examples: list[dict]) -> float:
    """Share of passages whose true title is the most likely of the six (summed answer log-prob)."""
    titles = sorted(TITLES.values())
    model.eval()
    right = 0
    for ex in examples:
        rows = [encode(tokenizer, {"passage": ex["passage"], "title": t}) for t in titles]
        batch = collate(rows, tokenizer.pad_token_id)
        logits = model(batch["input_ids"]).logits.float()  # (6, T, V)
        logp = torch.log_softmax(logits[:, :-1], -1)
        tgt = batch["labels"][:, 1:]
        mask = tgt != -100
        score = (logp.gather(-1, tgt.clamp_min(0)[..., None])[..., 0] * mask).sum(-1)  # (6,)
        right += titles[int(score.argmax())] == ex["title"]
    return right / max(1, len(examples))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="SmolLM2 HF folder (default: `llamactl models import smollm2-135m`)")
    ap.add_argument("--examples", type=int, default=None, help="training chats (default steps x batch: one pass)")
    ap.add_argument("--eval", type=int, default=0, help="held-out chats for accuracy before/after (0 = skip)")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--runs-dir", default=str(REPO / "runs"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.examples = args.examples or args.steps * args.batch

    from composer import Trainer
    from composer.optim import DecoupledAdamW
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer

    from llamactl.config.schema import TrainConfig
    from llamactl.interop.sources import load_model
    from llamactl.runs import new_run_dir
    from llamactl.secrets import redact
    from llamactl.services.convert import ConvertRequest, convert
    from llamactl.training.adapter import LlamactlComposerModel

    torch.manual_seed(args.seed)
    if args.model is None:
        from llamactl.services.models import import_model

        args.model = str(import_model("smollm2-135m").out)
    loaded = load_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(str(loaded.tokenizer_dir))
    train_ex, eval_ex = build_examples(SHARED / "corpora" / "austen.jsonl.gz", args.examples, args.eval, args.seed)
    rows = [encode(tokenizer, ex) for ex in train_ex]
    print(f"{len(rows)} training chats (mean {sum(len(r['input_ids']) for r in rows) / len(rows):.0f} tokens), "
          f"{len(eval_ex)} held out; e.g. {json.dumps(messages(train_ex[0]))[:200]}...")

    lora = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "lora_dropout": 0.05,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
    cfg = TrainConfig(run_name="smollm2-lora-cpu", runs_dir=args.runs_dir, max_duration=f"{args.steps}ba",
                      precision="fp32", seed=args.seed, global_train_batch_size=args.batch,
                      device_train_microbatch_size=args.batch)
    cfg.model.pretrained_model_name_or_path = str(Path(args.model).resolve())
    cfg.model.peft_config = lora
    cfg.tokenizer.name = str(loaded.tokenizer_dir)
    run = new_run_dir(args.runs_dir, cfg.run_name)
    import yaml

    (run / "config.yaml").write_text(yaml.safe_dump(redact(dataclasses.asdict(cfg)), sort_keys=False))

    model = LlamactlComposerModel(loaded.model.train(), tokenizer=tokenizer, peft_config=lora)
    acc_before = accuracy(model.model, tokenizer, eval_ex) if eval_ex else None
    losses: list[float] = []

    from composer.core import Callback

    class LossLog(Callback):
        """The per-batch training loss (answer tokens only), printed as it comes."""

        def batch_end(self, state, logger) -> None:
            losses.append(float(state.loss.item()))
            print(f"step {len(losses):3d}  loss {losses[-1]:.3f}", flush=True)

    dl = DataLoader(rows, batch_size=args.batch, shuffle=True, drop_last=True,
                    collate_fn=lambda b: collate(b, tokenizer.pad_token_id),
                    generator=torch.Generator().manual_seed(args.seed))
    params = [p for p in model.parameters() if p.requires_grad]
    t0 = time.perf_counter()
    trainer = Trainer(model=model, train_dataloader=dl, max_duration=f"{args.steps}ba",
                      optimizers=DecoupledAdamW(params, lr=args.lr, weight_decay=0.0), device="cpu",
                      precision="fp32", seed=args.seed, callbacks=[LossLog()],
                      save_folder=str(run / "checkpoints"), save_interval=f"{args.steps}ba",
                      save_filename="ep{epoch}-ba{batch}-rank{rank}.pt", progress_bar=False, log_to_console=False)
    trainer.fit()
    trainer.close()
    train_s = time.perf_counter() - t0
    acc_after = accuracy(model.model, tokenizer, eval_ex) if eval_ex else None

    k = max(1, min(5, len(losses) // 4))
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    adapter = run / "export" / "adapter"
    res = convert(ConvertRequest(source=str(run), out=adapter))
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    stock = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(args.model, dtype=torch.float32),
                                      str(adapter)).eval()
    ids = collate(rows[:2], tokenizer.pad_token_id)["input_ids"]
    model.model.eval()
    with torch.no_grad():
        diff = (stock(ids).logits - model.model(ids).logits).abs().max().item()
    summary = {"run_dir": str(run), "steps": len(losses), "train_seconds": round(train_s, 1),
               f"loss_first{k}": round(first, 4), f"loss_last{k}": round(last, 4), "loss_fell": last < first,
               "heldout_accuracy_before": acc_before, "heldout_accuracy_after": acc_after,
               "adapter": str(adapter), "lora_b_nonzero": res.lora_b_nonzero,
               "stock_peft_max_logit_diff": diff}
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    sys.exit(0 if main()["loss_fell"] else 1)
