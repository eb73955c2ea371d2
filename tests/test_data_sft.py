"""Chat/SFT data: exact loss masks, packing without cross-contamination, and a LoRA fine-tune on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from llamactl.data.embedded import embedded_tokenizer_dir
from llamactl.data.loaders import build_lm_dataloader, split_info
from llamactl.data.sft import SFTPacker, render_chat, render_pair
from llamactl.services.prepare_data import SFTOptions, prepare_sft

PAIRS = [{"prompt": f"Question {i}: what is {i} times {i + 3}?",
          "response": f" It is {i * (i + 3)}." + " Yes." * (i % 5)} for i in range(40)]


def _chats(n: int) -> list[dict]:
    out = []
    for i in range(n):
        msgs = [{"role": "system", "content": "Answer in one line."}] if i % 3 == 0 else []
        for t in range(1 + i % 3):
            msgs += [{"role": "user", "content": f"Name the number after {i + t}."},
                     {"role": "assistant", "content": f"The number after {i + t} is {i + t + 1}."}]
        out.append({"messages": msgs})
    return out


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def smol(shared_data: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(shared_data / "tokenizers" / "smollm2")


def test_pair_mask_covers_exactly_the_prompt_tokens(tmp_path: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_tokenizer_dir())
    out = tmp_path / "pairs"
    prepare_sft(SFTOptions(mode="sft", paths=[str(_write(tmp_path / "p.jsonl", PAIRS))], out=str(out),
                           tokenizer=str(embedded_tokenizer_dir()), seq_len=96, pack=False, workers=0))
    dl = build_lm_dataloader(data_dir=out, split="train", micro_batch_size=1, max_seq_len=96, shuffle=False, seed=0)
    for row, batch in zip(PAIRS, dl):
        prompt = tok(row["prompt"])["input_ids"]  # with the tokenizer's BOS
        response = tok(row["response"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = len(prompt) + len(response)
        ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
        assert ids[:n] == prompt + response
        masked = [i for i, lab in enumerate(labels[:n]) if lab == -100]
        assert masked == list(range(len(prompt)))  # exactly the prompt tokens
        assert labels[len(prompt):n] == response
        assert all(lab == -100 for lab in labels[n:])  # padding
        assert batch["sequence_id"][0, :n].eq(0).all() and batch["sequence_id"][0, n:].eq(-1).all()


def test_chat_mask_is_exactly_the_assistant_turns(smol):
    chat = _chats(3)[2]["messages"]  # system prompt from the template, 3 user/assistant turns
    ids, mask = render_chat(smol, chat)
    assert ids.tolist() == smol.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]
    runs, cur = [], []
    for t, m in zip(ids.tolist(), mask.tolist()):
        if m:
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    answers = [m["content"] for m in chat if m["role"] == "assistant"]
    assert [smol.decode(r) for r in runs] == [a + "<|im_end|>\n" for a in answers]
    ids2, mask2 = render_chat(smol, chat, mask_prompt=False)
    assert np.array_equal(ids, ids2) and mask2.all()


def test_chat_template_pairs_and_no_template_pairs_differ_only_in_rendering(smol):
    ids, mask = render_pair(smol, "Hi there", "Hello!", chat_template=True)
    text = smol.decode(ids)
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\nHello!<|im_end|>\n")
    assert smol.decode(ids[mask]) == "Hello!<|im_end|>\n"
    ids, mask = render_pair(smol, "Hi there", " Hello!")
    assert smol.decode(ids[mask]) == " Hello!<|im_end|>"  # SmolLM2's EOS is <|im_end|>


def test_packing_never_mixes_examples():
    rng = np.random.default_rng(0)
    packer = SFTPacker(32, pad_id=0, open_bins=4)
    examples, samples = [], []
    for i in range(60):
        n = int(rng.integers(3, 20))
        ids = np.arange(n) + 100 * (i + 1)  # every id tells which example it came from
        mask = np.arange(n) >= n // 2
        examples.append((ids, mask))
        samples += packer.add(ids, mask)
    samples += packer.flush()
    seen = []
    for tokens, labels, seq in samples:
        for k in range(seq.max() + 1):
            where = np.flatnonzero(seq == k)
            assert np.array_equal(where, np.arange(where[0], where[-1] + 1))  # contiguous
            ex = tokens[where]
            i = ex[0] // 100 - 1
            assert (ex // 100 == i + 1).all()  # one example per sequence id
            ids, mask = examples[i]
            assert np.array_equal(ex, ids)  # whole, never split over samples
            assert labels[where[0]] == -100  # no label predicted from the previous example
            assert np.array_equal(labels[where][1:], np.where(mask, ids, -100)[1:])
            seen.append(i)
        assert (labels[seq == -1] == -100).all() and (tokens[seq == -1] == 0).all()
    assert sorted(seen) == list(range(60))
    assert len(samples) < 45  # packed: 60 examples of ~11 tokens in 32-token samples


def test_chat_split_reads_back_with_sequence_ids_and_positions(tmp_path: Path, shared_data: Path):
    out = tmp_path / "chat"
    res = prepare_sft(SFTOptions(mode="chat", paths=[str(_write(tmp_path / "c.jsonl", _chats(30)))], out=str(out),
                                 tokenizer=str(shared_data / "tokenizers" / "smollm2"), seq_len=256,
                                 val_fraction=0.2, workers=2))
    train, val = res.splits
    assert (train.extra["examples"], val.extra["examples"]) == (24, 6)
    assert split_info(out, "train").kind == "sft"
    dl = build_lm_dataloader(data_dir=out, split="train", micro_batch_size=2, max_seq_len=256, shuffle=True, seed=1)
    batch = next(iter(dl))
    assert set(batch) == {"input_ids", "labels", "sequence_id", "position_ids"}
    assert all(v.shape == (2, 256) and v.dtype == torch.int64 for v in batch.values())
    seq, pos = batch["sequence_id"][0], batch["position_ids"][0]
    starts = torch.nonzero(torch.diff(seq) != 0).flatten() + 1
    assert pos[0] == 0 and (pos[starts] == 0).all()
    assert (batch["labels"][0][starts] == -100).all()


def _block_causal_mask(seq: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) boolean: attend to earlier tokens of the same packed example."""
    t = seq.shape[1]
    same = seq[:, :, None] == seq[:, None, :]  # (B, T, T)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    return (same & causal)[:, None]


def test_two_lora_steps_on_packed_chat_data(tmp_path: Path):
    """A 2-batch LoRA fine-tune of the tiny preset on chat data prepared with the embedded tokenizer."""
    from peft import LoraConfig, get_peft_model

    from llamactl.model.llama import Llama
    from llamactl.model.presets import preset

    out = tmp_path / "chat"
    prepare_sft(SFTOptions(mode="chat", paths=[str(_write(tmp_path / "c.jsonl", _chats(40)))], out=str(out),
                           tokenizer=str(embedded_tokenizer_dir()), seq_len=128, workers=0))
    torch.manual_seed(0)
    model = Llama(preset("tiny"))
    model.init_weights(0)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model = get_peft_model(model, LoraConfig(target_modules=["q_proj", "v_proj"], r=8, lora_alpha=16,
                                             init_lora_weights=False))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    dl = build_lm_dataloader(data_dir=out, split="train", micro_batch_size=2, max_seq_len=128, shuffle=True, seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    losses = []
    for step, batch in enumerate(dl):
        loss = model(batch["input_ids"], batch["labels"], position_ids=batch["position_ids"],
                     attn_mask=_block_causal_mask(batch["sequence_id"])).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        if step == 1:
            break
    assert len(losses) == 2 and all(np.isfinite(losses)) and 6.0 < losses[0] < 10.0  # ~ln(4096) at init
    after = dict(model.named_parameters())
    assert all(not torch.equal(before[n], after[n]) for n in before)  # adapters learned
    merged = model.base_model.model.state_dict()
    for k, v in base.items():  # the base weights are frozen
        key = k if k in merged else k.replace(".weight", ".base_layer.weight")
        assert torch.equal(merged[key], v), k
