"""Construction and initialisation are separate: a model built on the meta device, materialised
with ``to_empty`` and filled by ``init_weights(seed)`` is a normal, reproducible fresh model."""

from __future__ import annotations

import pytest
import torch

from llamactl.model import Llama, LlamaConfig
from llamactl.model.llama import RMSNorm, rope_inv_freq
from llamactl.model.presets import PRESETS, preset

CFG = LlamaConfig(vocab_size=1000, hidden_size=96, intermediate_size=200, num_hidden_layers=3,
                  num_attention_heads=6, num_key_value_heads=2, initializer_range=0.05,
                  tie_word_embeddings=True, rope_scaling={"rope_type": "llama3", "factor": 8.0,
                  "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64})


def meta_model(cfg: LlamaConfig = CFG, seed: int = 0) -> Llama:
    with torch.device("meta"):
        model = Llama(cfg)
    assert all(p.is_meta for p in model.parameters())  # nothing allocated yet
    model.to_empty(device="cpu")
    model.init_weights(seed)
    return model


def test_meta_init_gives_finite_weights_with_the_intended_statistics() -> None:
    model = meta_model()
    std = CFG.initializer_range
    for name, p in model.named_parameters():
        assert p.device.type == "cpu" and torch.isfinite(p).all(), name
        if name.endswith("norm.weight"):
            assert torch.equal(p, torch.ones_like(p)), name
        else:
            assert abs(p.mean().item()) < 0.1 * std, name
            assert abs(p.std().item() - std) < 0.1 * std, f"{name}: std {p.std().item():.4f}, want {std}"


def test_tied_head_is_the_embedding_parameter() -> None:
    model = meta_model()
    assert model.lm_head.weight is model.embed_tokens.weight
    assert len(list(model.parameters())) == len(dict(model.named_parameters(remove_duplicate=False))) - 1
    assert sum(p.numel() for p in model.parameters()) == CFG.num_params()
    untied = meta_model(CFG.replace(tie_word_embeddings=False))
    assert untied.lm_head.weight is not untied.embed_tokens.weight
    assert not torch.equal(untied.lm_head.weight, untied.embed_tokens.weight)
    assert sum(p.numel() for p in untied.parameters()) == untied.config.num_params()


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    a, b, c = meta_model(seed=5), meta_model(seed=5), meta_model(seed=6)
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
        if not name.endswith("norm.weight"):
            assert not torch.equal(pa, pc), name


def test_meta_init_equals_eager_init() -> None:
    """Building on meta first changes nothing: same seed, same weights as building on the CPU."""
    eager = Llama(CFG)
    eager.init_weights(5)
    for (name, p), q in zip(meta_model(seed=5).state_dict().items(), eager.state_dict().values()):
        assert torch.equal(p, q), name
    fresh = Llama.fresh(CFG, seed=5)  # what `llamactl train` builds from scratch
    assert fresh.lm_head.weight is fresh.embed_tokens.weight
    for (name, p), q in zip(fresh.state_dict().items(), eager.state_dict().values()):
        assert torch.equal(p, q), name
    assert torch.equal(fresh.inv_freq, eager.inv_freq)


def test_rope_buffer_is_recomputed_after_to_empty() -> None:
    """inv_freq is not in the state dict; to_empty leaves garbage that init_weights must replace."""
    model = meta_model()
    assert "inv_freq" not in model.state_dict()
    assert torch.equal(model.inv_freq, rope_inv_freq(CFG))


def test_padding_row_is_zero() -> None:
    model = meta_model(CFG.replace(pad_token_id=3, tie_word_embeddings=False))
    assert not model.embed_tokens.weight[3].any()


def test_fresh_model_trains_from_a_sane_start() -> None:
    """Initial loss of a fresh model is about ln(vocab): logits start near uniform."""
    model = meta_model()
    ids = torch.randint(0, CFG.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    loss = model(ids, labels=ids).loss.item()
    assert abs(loss - torch.log(torch.tensor(float(CFG.vocab_size))).item()) < 0.5


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_build_on_meta_with_their_published_sizes(name: str) -> None:
    cfg = preset(name)
    with torch.device("meta"):
        model = Llama(cfg)
    assert sum(p.numel() for p in model.parameters()) == cfg.num_params()
    published = {"smollm2-135m": 134_515_008, "llama-3.2-1b": 1_235_814_400,
                 "llama-3.2-3b": 3_212_749_824, "llama-3.1-8b": 8_030_261_248}
    if name in published:
        assert cfg.num_params() == published[name]


def test_norm_reset() -> None:
    norm = RMSNorm(4)
    with torch.no_grad():
        norm.weight.fill_(3.0)
    norm.reset_parameters()
    assert torch.equal(norm.weight, torch.ones(4))
