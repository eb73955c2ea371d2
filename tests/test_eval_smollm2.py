"""`llamactl eval` on a real pretrained model (SmolLM2-135M-Instruct from the PyPI GGUF) against an
independent reference computed here with stock transformers.

The reference re-implements the documented prompt format and scoring rule in its own loop over
transformers' model and KV cache: BIG-bench layout ("\\nQ: " + input + choices listed in a seeded
shuffle + "\\nA: "), the context's trailing space moved to the answer, context tokenized once,
each answer's log-likelihood summed token by token; raw and per-token-normalised argmax; ties to
the first choice.
"""

from __future__ import annotations

import csv
import gzip
import inspect
import json
import math
import random

import pytest
import torch

from llamactl.services.evaluate import EvalRequest, run_eval

TASKS = ["general_knowledge", "physical_intuition"]
SEQ_LEN = 512
pytestmark = pytest.mark.slow  # whole tasks, scored twice (ours and the reference): minutes on two CPU cores


@pytest.fixture(scope="module")
def hf_model(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(smollm2_dir), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(smollm2_dir))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, shared_data):
    with gzip.open(shared_data / "corpora" / "austen.jsonl.gz", "rt") as f:
        text = json.loads(f.readline())["text"]
    path = tmp_path_factory.mktemp("ppl") / "austen.txt"
    path.write_text(text[:9000])
    return path


@pytest.fixture(scope="module")
def result(smollm2_dir, shared_data, text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("evals") / "run"
    req = EvalRequest(model=str(smollm2_dir), tasks=TASKS, task_dirs=[shared_data / "icl-bigbench"],
                      data=[str(text_file)], seq_len=SEQ_LEN, dtype="fp32", device="cpu", out=out)
    return run_eval(req)


def _forward(model, ids, *, mask, pos, cache=None, keep=0):
    """A forward with a KV cache under either transformers 5 keyword (``cache`` or ``past_key_values``)."""
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    kwargs = {key: cache} if cache is not None else {}
    out = model(ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=keep, **kwargs)
    return out.logits, getattr(out, key)


def bigbench_prompts(task_json) -> list[tuple[str, list[str], dict[str, float]]]:
    """(prompt, choices, target_scores) per example, in the documented BIG-bench layout."""
    data = json.loads(task_json.read_text())
    rng = random.Random(0)
    out = []
    for ex in data["examples"]:
        scores = ex["target_scores"]
        listed = sorted(scores)
        rng.shuffle(listed)
        prompt = "\nQ: " + ex["input"] + "\n  choice: " + "\n  choice: ".join(listed) + "\nA: "
        out.append((prompt, list(scores), scores))
    return out


@torch.no_grad()
def reference_accuracy(model, tok, task_json, group: int = 16) -> tuple[float, float]:
    """Raw and per-token-normalised accuracy with stock transformers.

    Contexts of a few examples run together (left-padded, positions counting real tokens only,
    as transformers' generate does); the cache rows are then selected once per choice and every
    answer's tokens run on top of its context.
    """
    examples = bigbench_prompts(task_json)
    raw_hits = norm_hits = 0
    for g in range(0, len(examples), group):
        batch = examples[g:g + group]
        ctx, conts = [], []
        for prompt, choices, _ in batch:
            context = prompt.rstrip()
            space = prompt[len(context):]
            ctx.append(tok(context)["input_ids"])
            conts.append([tok(space + c, add_special_tokens=False)["input_ids"] for c in choices])
        c_len = max(len(c) for c in ctx)
        ids = torch.zeros((len(batch), c_len), dtype=torch.long)
        am = torch.zeros((len(batch), c_len), dtype=torch.long)
        for i, c in enumerate(ctx):
            ids[i, c_len - len(c):] = torch.tensor(c)
            am[i, c_len - len(c):] = 1
        logits, cache = _forward(model, ids, mask=am, pos=(am.cumsum(-1) - 1).clamp_min(0), keep=1)
        last = logits[:, -1].float().log_softmax(-1)  # (E, V)
        pairs = [(i, k) for i in range(len(batch)) for k in range(len(conts[i]))]
        sums = {(i, k): float(last[i, conts[i][k][0]]) for i, k in pairs}
        t = max(len(conts[i][k]) for i, k in pairs)
        if t > 1:
            rows = torch.tensor([i for i, _ in pairs])
            cache.reorder_cache(rows)
            x = torch.zeros((len(pairs), t - 1), dtype=torch.long)
            xm = torch.zeros((len(pairs), t - 1), dtype=torch.long)
            for r, (i, k) in enumerate(pairs):
                c = conts[i][k]
                x[r, :len(c) - 1] = torch.tensor(c[:-1])
                xm[r, :len(c) - 1] = 1
            pos = am.sum(-1)[rows][:, None] + torch.arange(t - 1)[None, :]
            logp = _forward(model, x, mask=torch.cat([am[rows], xm], 1), pos=pos, cache=cache)[0]
            logp = logp.float().log_softmax(-1)  # (N, t-1, V)
            for r, (i, k) in enumerate(pairs):
                c = conts[i][k]
                sums[i, k] += sum(float(logp[r, j, c[j + 1]]) for j in range(len(c) - 1))
        for i, (_, choices, scores) in enumerate(batch):
            s = [sums[i, k] for k in range(len(choices))]
            n_tok = [len(c) for c in conts[i]]
            best = max(scores.values())
            raw = max(range(len(choices)), key=lambda k: (s[k], -k))
            norm = max(range(len(choices)), key=lambda k: (s[k] / n_tok[k], -k))
            raw_hits += scores[choices[raw]] == best
            norm_hits += scores[choices[norm]] == best
    return raw_hits / len(examples), norm_hits / len(examples)


@pytest.mark.parametrize("task", TASKS)
def test_zero_shot_accuracy_equals_a_stock_transformers_reference(result, hf_model, shared_data, task):
    model, tok = hf_model
    raw, norm = reference_accuracy(model, tok, shared_data / "icl-bigbench" / f"{task}.json")
    got = next(s for s in result.tasks if s.task == task)
    assert got.shots == 0 and got.n == len(json.loads((shared_data / "icl-bigbench" / f"{task}.json").read_text())["examples"])
    assert abs(got.acc - raw) <= 0.005, (got.acc, raw)
    assert abs(got.acc_norm - norm) <= 0.005, (got.acc_norm, norm)
    assert got.acc_stderr == pytest.approx(math.sqrt(got.acc * (1 - got.acc) / (got.n - 1)))
    assert 0 < got.chance < 0.6


@torch.no_grad()
def test_perplexity_of_a_text_file_equals_stock_transformers(result, hf_model, text_file):
    model, tok = hf_model
    ids = tok(text_file.read_text())["input_ids"]
    total, count = 0.0, 0
    for s in range(0, len(ids), SEQ_LEN):
        block = torch.tensor([ids[s:s + SEQ_LEN]])
        if block.shape[1] < 2:
            continue
        loss = model(block, labels=block).loss
        total += float(loss) * (block.shape[1] - 1)
        count += block.shape[1] - 1
    p = result.perplexity[0]
    assert p.tokens == count
    assert p.ppl == pytest.approx(math.exp(total / count), rel=1e-3)
    assert p.ce == pytest.approx(total / count, rel=1e-3)


def test_results_are_written_as_json_and_csv(result):
    saved = json.loads((result.out_dir / "results.json").read_text())
    assert [t["task"] for t in saved["tasks"]] == TASKS
    assert saved["perplexity"][0]["tokens"] == result.perplexity[0].tokens
    rows = list(csv.DictReader(open(result.out_dir / "results.csv")))
    assert [r["task"] for r in rows] == TASKS + [f"perplexity:{result.perplexity[0].data}"]
    assert float(rows[0]["acc"]) == pytest.approx(result.tasks[0].acc)
