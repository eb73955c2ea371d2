"""The generation engine on tiny random models: parity with transformers' generate, sampling
semantics, seeds, stop strings, streaming text, and errors."""

from __future__ import annotations

import pytest
import torch

from llamactl.errors import UserInputError
from llamactl.generation import Generator, SamplingConfig, TextStream
from llamactl.generation.sampling import apply_repetition_penalty, apply_top_k, apply_top_p
from llamactl.interop.hf import llamactl_state_dict_to_hf, to_transformers_config
from llamactl.model.llama import Llama
from llamactl.model.presets import preset


def _pair(seed: int = 0, **overrides):
    """Our tiny Llama and a transformers LlamaForCausalLM with the same weights (fp32, CPU)."""
    from transformers import LlamaForCausalLM

    cfg = preset("tiny", **{"eos_token_id": None, **overrides})  # no implicit EOS in transformers' generate
    torch.manual_seed(seed)
    ours = Llama(cfg)
    ours.init_weights(seed)
    ours.eval()
    hf = LlamaForCausalLM(to_transformers_config(cfg)).eval()
    state = llamactl_state_dict_to_hf(ours.state_dict(), cfg)
    if cfg.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    hf.load_state_dict(state, strict=True)
    return cfg, ours, hf


@pytest.fixture(scope="module")
def models():
    return _pair(0)


def _hf_greedy(hf, prompt: list[int], n: int, eos: int | None) -> list[int]:
    ids = torch.tensor([prompt])
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                      eos_token_id=eos, pad_token_id=0, temperature=None, top_p=None, top_k=None)
    row = out[0, len(prompt):].tolist()
    if eos is not None and eos in row:
        row = row[:row.index(eos) + 1]
    return row


def test_greedy_batched_prompts_of_different_lengths_equal_hf_generate_each_alone(models):
    cfg, ours, hf = models
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, cfg.vocab_size, (n,), generator=g).tolist() for n in (3, 17, 9, 30)]
    out = Generator(ours).generate(prompts, SamplingConfig(max_new_tokens=24), eos_token_ids=[], pad_token_id=0)
    for p, got in zip(prompts, out.tokens):
        assert got == _hf_greedy(hf, p, 24, None)
    assert out.finish_reasons == ["length"] * 4
    assert out.prompt_tokens == [3, 17, 9, 30]


def test_gqa_untied_llama3_rope_model_matches_hf_too():
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64}
    cfg, ours, hf = _pair(3, tie_word_embeddings=False, rope_scaling=rope, num_key_value_heads=1)
    prompts = [[5, 6, 7, 8, 9, 10, 11], [100, 200]]
    out = Generator(ours).generate(prompts, SamplingConfig(max_new_tokens=20), pad_token_id=0)
    for p, got in zip(prompts, out.tokens):
        assert got == _hf_greedy(hf, p, 20, None)


def test_rows_stop_at_their_eos_and_keep_it(models):
    cfg, ours, hf = models
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13]]
    free = Generator(ours).generate(prompts, SamplingConfig(max_new_tokens=12), pad_token_id=0)
    eos = free.tokens[0][4]  # make row 0's fifth token the end-of-sequence token
    out = Generator(ours).generate(prompts, SamplingConfig(max_new_tokens=12), eos_token_ids=[eos], pad_token_id=0)
    assert out.tokens[0] == free.tokens[0][:free.tokens[0].index(eos) + 1]
    assert out.finish_reasons[0] == "eos"
    for p, got in zip(prompts, out.tokens):
        assert got == _hf_greedy(hf, p, 12, eos)
    ignored = Generator(ours).generate(prompts, SamplingConfig(max_new_tokens=12, ignore_eos=True),
                                       eos_token_ids=[eos], pad_token_id=0)
    assert ignored.tokens == free.tokens


def test_seeded_sampling_is_reproducible_and_the_seed_matters(models):
    _, ours, _ = models
    prompts = [[5, 6, 7], [9, 10]]
    gen = Generator(ours)
    cfg = SamplingConfig(max_new_tokens=16, temperature=1.0, top_p=0.95, top_k=50, seed=1234)
    a = gen.generate(prompts, cfg).tokens
    b = gen.generate(prompts, cfg).tokens
    c = gen.generate(prompts, SamplingConfig(max_new_tokens=16, temperature=1.0, top_p=0.95, top_k=50, seed=99)).tokens
    assert a == b
    assert a != c


def test_top_k_one_sampling_is_greedy(models):
    _, ours, _ = models
    gen = Generator(ours)
    greedy = gen.generate([[5, 6, 7]], SamplingConfig(max_new_tokens=10)).tokens
    sampled = gen.generate([[5, 6, 7]], SamplingConfig(max_new_tokens=10, temperature=0.7, top_k=1, seed=3)).tokens
    assert greedy == sampled


def test_repetition_penalty_matches_hf_greedy(models):
    cfg, ours, hf = models
    prompt = [5, 6, 7, 5, 6, 7, 5]
    out = Generator(ours).generate([prompt], SamplingConfig(max_new_tokens=16, repetition_penalty=1.3))
    ids = torch.tensor([prompt])
    ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                      repetition_penalty=1.3, eos_token_id=None, pad_token_id=0, temperature=None, top_p=None,
                      top_k=None)[0, len(prompt):].tolist()
    assert out.tokens[0] == ref


def test_logit_filters_match_transformers_processors():
    from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor, TopKLogitsWarper,
                                                        TopPLogitsWarper)

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=g) * 3
    ids = torch.randint(0, 50, (3, 7), generator=g)
    seen = torch.zeros(3, 50, dtype=torch.bool).scatter_(1, ids, True)
    assert torch.equal(apply_repetition_penalty(logits, seen, 1.7),
                       RepetitionPenaltyLogitsProcessor(1.7)(ids, logits.clone()))
    assert torch.equal(apply_top_k(logits, 5), TopKLogitsWarper(5)(ids, logits.clone()))
    assert torch.equal(apply_top_p(logits, 0.8), TopPLogitsWarper(0.8)(ids, logits.clone()))


def test_prompt_longer_than_the_context_is_a_clear_error(models):
    cfg, ours, _ = models
    with pytest.raises(UserInputError, match="context is 512 tokens; shorten the prompt"):
        Generator(ours).generate([[5] * 600], SamplingConfig(max_new_tokens=4))


def test_new_tokens_are_capped_at_the_context(models):
    _, ours, _ = models
    out = Generator(ours).generate([[5] * 505], SamplingConfig(max_new_tokens=50))
    assert len(out.tokens[0]) == 7


def test_bad_sampling_settings_are_refused():
    with pytest.raises(UserInputError, match="top_p"):
        SamplingConfig(top_p=1.5)
    with pytest.raises(UserInputError, match="temperature"):
        SamplingConfig(temperature=-1)


def test_graph_mode_needs_cuda(models):
    _, ours, _ = models
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(UserInputError, match="CUDA"):
        Generator(ours, mode="graph")


# ---------------------------------------------------------------------------------------- text
class _ToyTokenizer:
    """Byte-level: token i is byte i, so multi-byte characters span tokens."""

    @staticmethod
    def encode(text: str) -> list[int]:
        return list(text.encode())

    @staticmethod
    def decode(ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def test_text_stream_never_emits_half_characters_and_reassembles_the_text():
    text = "héllo wörld — ✓ done"
    s = TextStream(_ToyTokenizer.decode)
    pieces = [s.push(t) for t in _ToyTokenizer.encode(text)]
    pieces.append(s.finish())
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_text_stream_cuts_at_a_stop_string_spanning_tokens_and_holds_back_its_prefix():
    s = TextStream(_ToyTokenizer.decode, stop=["\n\nQ:"])
    out = []
    for t in _ToyTokenizer.encode("Paris.\n\nQ: next"):
        out.append(s.push(t))
        if s.stopped:
            break
    assert "".join(out) == "Paris."
    assert s.final_text == "Paris."
    assert s.stopped
    # "\n" was held back while it could still become the stop string
    s2 = TextStream(_ToyTokenizer.decode, stop=["\n\nQ:"])
    got = [s2.push(t) for t in _ToyTokenizer.encode("a\n\nb")]
    assert got[:3] == ["a", "", ""] and got[3] == "\n\nb"


def test_generator_stops_rows_at_stop_strings_and_streams_exactly_the_final_text(models):
    _, ours, _ = models
    gen = Generator(ours)
    # A decode that maps ids to letters, so a stop string can be chosen from a free run's text.
    decode = lambda ids: "".join(chr(97 + i % 26) for i in ids)  # noqa: E731
    prompts = [[5, 6, 7], [9, 10, 11, 12]]
    free = gen.generate(prompts, SamplingConfig(max_new_tokens=12), decode=decode)
    stop = free.texts[1][5:7]
    streamed: dict[int, str] = {0: "", 1: ""}

    def on_text(row: int, piece: str) -> None:
        streamed[row] += piece

    out = gen.generate(prompts, SamplingConfig(max_new_tokens=12, stop=[stop]), decode=decode, on_text=on_text)
    assert out.texts[1] == free.texts[1][:free.texts[1].index(stop)]
    assert out.finish_reasons[1] == "stop"
    assert streamed == {0: out.texts[0], 1: out.texts[1]}
    assert len(out.tokens[1]) == free.texts[1].index(stop) + len(stop)


@pytest.mark.slow
def test_compiled_decode_step_gives_the_same_tokens_as_eager(models):
    _, ours, _ = models
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13]]
    eager = Generator(ours, mode="eager").generate(prompts, SamplingConfig(max_new_tokens=10))
    compiled = Generator(ours, mode="compile").generate(prompts, SamplingConfig(max_new_tokens=10))
    assert compiled.tokens == eager.tokens


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["graph", "compile"])
def test_cuda_graph_and_compiled_decode_match_eager_on_gpu(mode):
    cfg = preset("tiny")
    model = Llama(cfg).cuda()
    model.init_weights(0)
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13], list(range(20, 60))]
    eager = Generator(model, mode="eager").generate(prompts, SamplingConfig(max_new_tokens=40))
    gen = Generator(model, mode=mode)
    fast = gen.generate(prompts, SamplingConfig(max_new_tokens=40))
    assert fast.tokens == eager.tokens
    again = gen.generate(prompts[:2] + [[1, 2]], SamplingConfig(max_new_tokens=40))  # reuses the graph
    ref = Generator(model, mode="eager").generate(prompts[:2] + [[1, 2]], SamplingConfig(max_new_tokens=40))
    assert again.tokens == ref.tokens
    seeded = SamplingConfig(max_new_tokens=30, temperature=0.8, top_p=0.9, seed=7)
    assert gen.generate(prompts, seeded).tokens == Generator(model, mode="eager").generate(prompts, seeded).tokens
