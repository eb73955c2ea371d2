"""HF checkpoint folders on disk: what transformers saves we load, what we save transformers loads,
bit for bit, sharded or not; legacy ``.bin`` files never run pickle code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from llama_test_utils import TINY_CONFIGS, random_ids, randomize_
from llamactl.errors import ModelNotFoundError, WeightMappingError
from llamactl.interop.checkpoint import load_hf_folder, load_state_into, read_hf_state_dict, save_hf_folder
from llamactl.interop.hf import config_from_hf_dict, hf_state_dict_to_llamactl, to_transformers_config
from llamactl.model import Llama

UNTIED = TINY_CONFIGS["gqa-untied"]


def random_hf(name: str, seed: int = 0) -> LlamaForCausalLM:
    return randomize_(LlamaForCausalLM(to_transformers_config(TINY_CONFIGS[name])), seed).eval()


def ours_from_hf(hf: LlamaForCausalLM) -> Llama:
    cfg = config_from_hf_dict(hf.config.to_dict())
    with torch.device("meta"):
        model = Llama(cfg)
    load_state_into(model, hf_state_dict_to_llamactl(hf.state_dict(), cfg))
    return model.eval()


def hf_reference_state(hf: LlamaForCausalLM) -> dict[str, torch.Tensor]:
    """transformers' state dict as save_pretrained writes it (a tied head left out)."""
    tied = hf.config.tie_word_embeddings
    return {k: v for k, v in hf.state_dict().items() if not (tied and k == "lm_head.weight")}


@pytest.mark.parametrize("name", ["gqa-untied", "mha-tied-llama3"])
def test_hf_ours_hf_round_trip_on_disk(name: str, tmp_path: Path) -> None:
    hf = random_hf(name, seed=1)
    ours = ours_from_hf(hf)
    folder = save_hf_folder(ours, tmp_path / "export")

    # The tensors on disk are transformers' tensors, bit for bit.
    on_disk = read_hf_state_dict(folder)
    want = hf_reference_state(hf)
    assert on_disk.keys() == want.keys()
    assert all(torch.equal(on_disk[k], want[k]) for k in want)

    # We read back what we wrote.
    again = load_hf_folder(folder)
    assert again.config == ours.config
    for k, v in ours.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    if again.config.tie_word_embeddings:
        assert again.lm_head.weight is again.embed_tokens.weight

    # Stock transformers loads our folder and computes exactly what the original computed.
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert isinstance(reloaded, LlamaForCausalLM)
    ids = random_ids(ours.config, 2, 19)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, hf(ids).logits)
        assert (again(ids).logits - hf(ids).logits).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", ["gqa-untied", "mha-tied-llama3"])
def test_loads_a_folder_saved_by_transformers(name: str, tmp_path: Path) -> None:
    hf = random_hf(name, seed=2)
    hf.save_pretrained(tmp_path / "hf")
    ours = load_hf_folder(tmp_path / "hf")
    assert ours.config == TINY_CONFIGS[name]
    ids = random_ids(ours.config, 2, 17, seed=3)
    with torch.no_grad():
        assert (ours(ids).logits - hf(ids).logits).abs().max().item() <= 1e-5


def test_sharded_safetensors_round_trip(tmp_path: Path) -> None:
    hf = random_hf("gqa-untied", seed=4)
    ours = ours_from_hf(hf)
    folder = save_hf_folder(ours, tmp_path / "sharded", max_shard_bytes=20_000)
    shards = sorted(folder.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and not (folder / "model.safetensors").exists()
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(hf_reference_state(hf))
    assert {folder / f for f in index["weight_map"].values()} == set(shards)
    assert index["metadata"]["total_size"] == sum(v.numel() * 4 for v in hf_reference_state(hf).values())

    again = load_hf_folder(folder)
    assert all(torch.equal(again.state_dict()[k], v) for k, v in ours.state_dict().items())
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = random_ids(ours.config, 1, 11)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, hf(ids).logits)

    shards[1].unlink()
    with pytest.raises(ModelNotFoundError, match=shards[1].name):
        load_hf_folder(folder)


def test_save_in_bf16(tmp_path: Path) -> None:
    ours = ours_from_hf(random_hf("mha-tied-llama3", seed=5))
    folder = save_hf_folder(ours, tmp_path / "bf16", dtype="bf16")
    assert json.loads((folder / "config.json").read_text())["torch_dtype"] == "bfloat16"
    state = read_hf_state_dict(folder)
    assert all(v.dtype == torch.bfloat16 for v in state.values())
    kept = load_hf_folder(folder, dtype=None)
    assert kept.embed_tokens.weight.dtype == torch.bfloat16
    assert torch.equal(kept.embed_tokens.weight, ours.embed_tokens.weight.to(torch.bfloat16))
    assert ours.embed_tokens.weight.dtype == torch.float32  # saving did not cast the live model


def test_generation_config_written(tmp_path: Path) -> None:
    ours = ours_from_hf(random_hf("gqa-untied"))
    folder = save_hf_folder(ours, tmp_path / "g", generation_config={"max_new_tokens": 7})
    gen = json.loads((folder / "generation_config.json").read_text())
    assert gen["bos_token_id"] == ours.config.bos_token_id and gen["max_new_tokens"] == 7


def test_bin_checkpoint_loads_with_weights_only(tmp_path: Path) -> None:
    hf = random_hf("gqa-untied", seed=6)
    folder = tmp_path / "bin"
    folder.mkdir()
    hf.config.to_json_file(folder / "config.json")
    torch.save(hf.state_dict(), folder / "pytorch_model.bin")
    ours = load_hf_folder(folder)
    ids = random_ids(ours.config, 1, 13)
    with torch.no_grad():
        assert (ours(ids).logits - hf(ids).logits).abs().max().item() <= 1e-5


class _RunsCode:
    """An object whose unpickling would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_bin_with_pickled_code_is_refused(tmp_path: Path) -> None:
    hf = random_hf("gqa-untied")
    folder = tmp_path / "evil"
    folder.mkdir()
    hf.config.to_json_file(folder / "config.json")
    marker = tmp_path / "code-ran"
    torch.save({**hf.state_dict(), "payload": _RunsCode(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(WeightMappingError, match="refuses; convert it to safetensors"):
        load_hf_folder(folder)
    assert not marker.exists(), "unpickling ran code from the checkpoint"


def test_truncated_bin_is_reported_as_corrupt(tmp_path: Path) -> None:
    hf = random_hf("gqa-untied")
    folder = tmp_path / "cut"
    folder.mkdir()
    hf.config.to_json_file(folder / "config.json")
    torch.save(hf.state_dict(), folder / "pytorch_model.bin")
    data = (folder / "pytorch_model.bin").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightMappingError, match="corrupt or incomplete"):
        load_hf_folder(folder)


def test_config_and_weights_that_disagree_are_refused(tmp_path: Path) -> None:
    hf = random_hf("gqa-untied")
    hf.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["intermediate_size"] = 84
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightMappingError, match=r"'layers\.0\.mlp\.down_proj\.weight' has shape \(48, 83\) but the config needs \(48, 84\)"):
        load_hf_folder(tmp_path / "m")


def test_missing_folder_and_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_hf_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="config.json"):
        load_hf_folder(tmp_path / "empty")
    LlamaForCausalLM(to_transformers_config(UNTIED)).config.to_json_file(tmp_path / "empty" / "config.json")
    with pytest.raises(ModelNotFoundError, match="model.safetensors"):
        load_hf_folder(tmp_path / "empty")
