"""The OUTER model: our pure-PyTorch :class:`~llamactl.model.Llama` speaking Composer.

``LlamactlComposerModel`` subclasses ``composer.models.HuggingFaceModel`` so that everything
Composer and LLM Foundry tooling expect of an HF model works (checkpoint metadata with an HF
``config.json``, PEFT-only checkpoints, FSDP wrapping of decoder layers), while the forward is ours:

* the batch is filtered to what the inner model takes (``input_ids``, ``labels``, ``sequence_id``);
* training returns the loss from the fused chunked head — no (B, T, vocab) logits are made;
* ``eval_forward`` returns the loss and the token count, which feed token-weighted cross-entropy
  and perplexity metrics (the same definition ``llamactl eval`` uses);
* ``flops_per_batch`` lets Composer's speed monitor (and our progress display) report MFU;
* a PEFT LoRA config is applied to the inner model by HF module names (``q_proj``, ``v_proj``,
  ...), leaving only LoRA parameters trainable.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from composer.models import HuggingFaceModel
from torchmetrics import Metric

from llamactl.errors import ConfigError
from llamactl.model.llama import DecoderLayer, Llama, LlamaOutput
from llamactl.model.loss import IGNORE_INDEX

log = logging.getLogger(__name__)

_FORWARD_KEYS = ("input_ids", "labels", "sequence_id", "position_ids")


class TokenCrossEntropy(Metric):
    """Mean next-token cross-entropy over all non-ignored target tokens seen (token-weighted)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("sum_loss", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, loss: torch.Tensor, tokens: torch.Tensor) -> None:  # type: ignore[override]
        self.sum_loss += loss.detach().to(torch.float64) * tokens.to(torch.float64)
        self.tokens += tokens.to(torch.int64)

    def compute(self) -> torch.Tensor:
        return (self.sum_loss / self.tokens.clamp_min(1)).float()


class TokenPerplexity(TokenCrossEntropy):
    """exp(token-weighted mean cross-entropy)."""

    def compute(self) -> torch.Tensor:
        return torch.exp(super().compute())


def count_targets(labels: torch.Tensor) -> torch.Tensor:
    """Number of next-token targets in aligned labels (B, T): the shifted labels that are not -100."""
    return (labels[:, 1:] != IGNORE_INDEX).sum()


def check_lora_bias(model: Llama, peft_config: dict[str, Any]) -> None:
    """Refuse ``bias: lora_only`` on a model with biases: Composer's adapter-only checkpoints keep
    the LoRA matrices but not those biases, so the run would end with a checkpoint that cannot be
    turned back into the trained model (export refuses it; better to say so before training)."""
    if peft_config.get("bias") == "lora_only" and (model.config.attention_bias or model.config.mlp_bias):
        raise ConfigError("peft_config.bias=lora_only: Composer's adapter-only checkpoints do not save the biases "
                          "it trains, so they would be lost; use bias: all (saved) or bias: none")


def apply_lora(model: Llama, peft_config: dict[str, Any]):
    """Wrap ``model`` in a PEFT ``PeftModel`` with LoRA on the named HF modules.

    Accepts LLM Foundry's ``peft_config`` keys (``peft_type``, ``task_type``, ``r``, ``lora_alpha``,
    ``lora_dropout``, ``target_modules``, ``bias``, ``use_rslora``, ``use_dora``, ...). The task type
    is dropped on purpose: PEFT's causal-LM wrapper passes HF-only kwargs to forward, and our model
    is not an HF model; a plain ``PeftModel`` forwards the call unchanged.
    """
    from peft import LoraConfig, get_peft_model

    cfg = dict(peft_config)
    peft_type = str(cfg.pop("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise ConfigError(f"peft_config.peft_type {peft_type!r} is not supported; llamactl trains LoRA adapters")
    cfg.pop("task_type", None)
    targets = cfg.get("target_modules")
    if isinstance(targets, str) and targets != "all-linear":
        targets = [targets]
    if targets is None:
        raise ConfigError("peft_config.target_modules is required, e.g. [q_proj, k_proj, v_proj, o_proj]")
    if targets != "all-linear":
        known = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
        bad = [t for t in targets if t not in known]
        if bad:
            raise ConfigError(f"peft_config.target_modules has {bad[0]!r}; LoRA can target "
                              f"{', '.join(sorted(known))} (lm_head and embeddings are not supported)")
        cfg["target_modules"] = list(targets)
    try:
        lora = LoraConfig(**cfg)
    except TypeError as e:
        raise ConfigError(f"peft_config: {e}") from e
    return get_peft_model(model, lora)


class LlamactlComposerModel(HuggingFaceModel):
    """Composer model around our inner Llama (optionally PEFT-wrapped)."""

    def __init__(self, model: Llama, *, tokenizer: Any = None, peft_config: dict[str, Any] | None = None,
                 hf_config: Any = None) -> None:
        from llamactl.interop.hf import to_transformers_config

        inner = apply_lora(model, peft_config) if peft_config else model
        # No train metrics: Composer would run an extra forward per micro-batch to compute them; the
        # training loss is recorded every step anyway.
        super().__init__(inner, tokenizer=tokenizer, use_logits=False, shift_labels=True, metrics=None,
                         eval_metrics=[TokenCrossEntropy(), TokenPerplexity()], should_save_peft_only=True)
        # Composer reads an HF PretrainedConfig (checkpoint metadata, use_return_dict); ours is a
        # dataclass, so supply the equivalent transformers config.
        self.config = hf_config if hf_config is not None else to_transformers_config(model.config)
        self.model_forward_args = set(_FORWARD_KEYS)

    @property
    def llama(self) -> Llama:
        """The bare inner model, also when PEFT-wrapped or FSDP1-wrapped.

        Deliberately not a second attribute holding the module: a module registered under two
        names appears twice in ``state_dict()`` (checkpoints twice the size) and FSDP shards it
        along both paths — FSDP2 then faulted with an illegal memory access in backward and FSDP1
        wrote sharded checkpoints it could not load back (seen on 2×H200).
        """
        m = self.model
        m = getattr(m, "module", m)  # FSDP1's wrapper
        if self.using_peft:
            m = m.get_base_model()
        return m

    # ---------------------------------------------------------------- forward / loss
    def forward(self, batch: dict[str, Any]) -> LlamaOutput:
        kwargs = {k: batch[k] for k in _FORWARD_KEYS if k in batch}
        if "labels" not in kwargs:
            kwargs["labels"] = batch["input_ids"]
        return self.model(**kwargs)

    def loss(self, outputs: LlamaOutput, batch: dict[str, Any]) -> torch.Tensor:
        return outputs.loss

    def eval_forward(self, batch: dict[str, Any], outputs: Any = None) -> dict[str, torch.Tensor]:
        out = outputs if outputs is not None else self.forward(batch)
        labels = batch.get("labels", batch["input_ids"])
        return {"loss": out.loss.detach(), "tokens": count_targets(labels)}

    def update_metric(self, batch: Any, outputs: Any, metric: Metric) -> None:
        if isinstance(outputs, LlamaOutput):  # train-metric path hands us forward() output
            labels = batch.get("labels", batch["input_ids"])
            outputs = {"loss": outputs.loss.detach(), "tokens": count_targets(labels)}
        metric.update(outputs["loss"].to(metric.device), outputs["tokens"].to(metric.device))

    # ---------------------------------------------------------------- speed accounting
    def flops_per_batch(self, batch: dict[str, Any]) -> float:
        """Training FLOPs for one batch: 6·N per token plus attention (see LlamaConfig.flops_per_token).

        With LoRA the frozen weights get no weight gradient, so their cost is 4·N, not 6·N.
        """
        b, t = batch["input_ids"].shape
        cfg = self.llama.config
        per_token = cfg.flops_per_token(t)
        if self.using_peft:
            n = cfg.num_params(include_embedding=False) + (cfg.vocab_size * cfg.hidden_size
                                                           if cfg.tie_word_embeddings else 0)
            per_token -= 2.0 * n
        return per_token * b * t


def fsdp_wrap_fn(module: torch.nn.Module) -> bool:
    """Shard each decoder layer as its own FSDP unit (Composer calls this on every module)."""
    return isinstance(module, DecoderLayer)


def activation_checkpointing_fn(module: torch.nn.Module) -> bool:
    return isinstance(module, DecoderLayer)
