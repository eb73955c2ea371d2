"""Config loading: interpolation, overrides, unknown keys, type errors, LLM Foundry shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamactl.config import load_train_config
from llamactl.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_variables_interpolate(tmp_path):
    p = write(tmp_path, "variables:\n  seq: 128\n  lr: 0.01\nmax_seq_len: ${variables.seq}\n"
                        "optimizer:\n  lr: ${variables.lr}\ntrain_loader:\n  dataset:\n    max_seq_len: ${variables.seq}\n")
    cfg = load_train_config(p)
    assert cfg.max_seq_len == 128
    assert cfg.train_loader.dataset.max_seq_len == 128
    assert cfg.optimizer.lr == pytest.approx(0.01)


def test_overrides_apply_after_yaml_and_parse_types(tmp_path):
    p = write(tmp_path, "variables:\n  seq: 128\nmax_seq_len: ${variables.seq}\noptimizer:\n  lr: 0.01\n")
    cfg = load_train_config(p, ["optimizer.lr=1e-4", "variables.seq=64", "model.peft_config.target_modules=[q_proj,v_proj]",
                                "max_duration=7", "precision=fp32"])
    assert cfg.optimizer.lr == pytest.approx(1e-4)
    assert cfg.max_seq_len == 64, "an override of a variable flows through interpolation"
    assert cfg.model.peft_config == {"target_modules": ["q_proj", "v_proj"]}
    assert cfg.max_duration == "7ba"
    assert cfg.precision == "fp32"


def test_unknown_key_names_it_and_the_closest_valid_key(tmp_path):
    p = write(tmp_path, "optimizer:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_train_config(p)
    assert "optimizer.learning_rate" in str(e.value)
    p = write(tmp_path, "max_durration: 10ba\n")
    with pytest.raises(ConfigError, match="did you mean 'max_duration'"):
        load_train_config(p)


def test_unknown_override_key_is_refused(tmp_path):
    p = write(tmp_path, "seed: 1\n")
    with pytest.raises(ConfigError, match="did you mean 'model.preset'"):
        load_train_config(p, ["model.prest=tiny"])


@pytest.mark.parametrize("text, path", [
    ("optimizer:\n  lr: fast\n", "optimizer.lr"),
    ("global_train_batch_size: 8.5\n", "global_train_batch_size"),
    ("model:\n  compile: 3\n", "model.compile"),
    ("precision: amp_bf17\n", "precision"),
    ("max_duration: ten batches\n", "max_duration"),
    ("optimizer:\n  betas: 0.9\n", "optimizer.betas"),
    ("train_loader:\n  dataset: [1, 2]\n", "train_loader.dataset"),
])
def test_type_errors_name_the_path(tmp_path, text, path):
    with pytest.raises(ConfigError) as e:
        load_train_config(write(tmp_path, text))
    assert path in str(e.value)


def test_bad_yaml_and_missing_file_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_train_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_train_config(write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(ConfigError, match="interpolation"):
        load_train_config(write(tmp_path, "max_seq_len: ${variables.missing}\n"))
    with pytest.raises(ConfigError, match="key=value"):
        load_train_config(write(tmp_path, "seed: 1\n"), ["seed"])


def test_shipped_yamls_load_and_say_how_to_run_them():
    for y in sorted((REPO / "yamls").glob("*.yaml")):
        first = y.read_text().splitlines()[0]
        assert first.startswith("# ") and "llamactl" in first, f"{y.name}: first line must be the command"
        load_train_config(y)


def test_lora_yaml_has_the_seed_shape():
    cfg = load_train_config(REPO / "yamls" / "llama3-1b-lora.yaml")
    lora = cfg.lora
    assert (lora["r"], lora["lora_alpha"], lora["lora_dropout"]) == (8, 16, 0.05)
    assert lora["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert cfg.scheduler.name == "cosine_with_warmup"
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.betas) == ("decoupled_adamw", 6e-4, [0.9, 0.95])
    assert cfg.precision == "amp_bf16"
    assert {"speed_monitor", "lr_monitor", "memory_monitor"} <= set(cfg.callbacks)


def test_llm_foundry_train_yaml_is_accepted(tmp_path):
    """A train YAML written for LLM Foundry (its keys, its variables) loads as is."""
    text = """
variables:
  data_local: ./my-copy-c4
  data_remote:
  max_seq_len: 2048
  global_seed: 17
  run_name:
max_seq_len: ${variables.max_seq_len}
run_name: ${variables.run_name}
model:
  name: hf_causal_lm
  pretrained_model_name_or_path: meta-llama/Llama-3.2-1B
  pretrained: true
  use_auth_token: true
tokenizer:
  name: meta-llama/Llama-3.2-1B
  kwargs:
    model_max_length: ${variables.max_seq_len}
train_loader:
  name: text
  dataset:
    local: ${variables.data_local}
    split: train_small
    shuffle: true
    max_seq_len: ${variables.max_seq_len}
    shuffle_seed: ${variables.global_seed}
  drop_last: true
  num_workers: 8
scheduler:
  name: cosine_with_warmup
  t_warmup: 100ba
  alpha_f: 0.1
optimizer:
  name: decoupled_adamw
  lr: 6.0e-4
  betas: [0.9, 0.95]
  eps: 1.0e-08
  weight_decay: 0.0
algorithms:
  gradient_clipping:
    clipping_type: norm
    clipping_threshold: 1.0
max_duration: 4800ba
eval_interval: 500ba
eval_first: false
eval_subset_num_batches: -1
global_train_batch_size: 256
seed: ${variables.global_seed}
device_eval_batch_size: 16
device_train_microbatch_size: 16
precision: amp_bf16
fsdp_config:
  sharding_strategy: FULL_SHARD
  mixed_precision: PURE
  activation_checkpointing: true
  activation_checkpointing_reentrant: false
  activation_cpu_offload: false
  limit_all_gathers: true
progress_bar: false
log_to_console: true
console_log_interval: 1ba
callbacks:
  speed_monitor:
    window_size: 10
  lr_monitor: {}
  memory_monitor: {}
  runtime_estimator: {}
"""
    cfg = load_train_config(write(tmp_path, text))
    assert cfg.model.name == "hf_causal_lm"
    assert cfg.train_loader.dataset.shuffle_seed == 17
    assert cfg.fsdp_config["sharding_strategy"] == "FULL_SHARD"
    assert cfg.run_name is None
