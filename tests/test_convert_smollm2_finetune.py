"""The documented CPU LoRA fine-tune of SmolLM2-135M (scripts/lora_smollm2_cpu.py), shortened:
real chat examples from ../shared/data, a real Composer run, loss falls, export reloads stock."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "lora_smollm2_cpu.py"


def _script():
    spec = importlib.util.spec_from_file_location("lora_smollm2_cpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_chat_examples_are_balanced_and_held_out(shared_data):
    mod = _script()
    train, held = mod.build_examples(shared_data / "corpora" / "austen.jsonl.gz", 60, 12, seed=0)
    assert len(train) == 60 and len(held) == 12
    assert {ex["title"] for ex in train} == set(mod.TITLES.values())
    assert not {ex["passage"] for ex in train} & {ex["passage"] for ex in held}
    chat = mod.messages(train[0])
    assert [m["role"] for m in chat] == ["system", "user", "assistant"] and chat[2]["content"] == train[0]["title"]
    assert train[0]["passage"] in chat[1]["content"]


@pytest.mark.slow
def test_short_lora_finetune_loss_falls(smollm2_dir, tmp_path):
    summary = _script().main(["--model", str(smollm2_dir), "--steps", "4", "--batch", "2", "--examples", "32",
                              "--val", "8", "--work", str(tmp_path)])
    assert summary["steps"] == 4 and summary["loss_fell"], summary
    assert summary["lora_b_nonzero"][0] == summary["lora_b_nonzero"][1] > 0
    assert summary["stock_peft_vs_ours_max_logit_diff"] <= 1e-5
    assert summary["heldout_answer_loss_after"] < summary["heldout_answer_loss_before"]
