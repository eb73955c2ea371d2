"""The embedded default dataset: Jane Austen's novels and a 4,096-token BPE, shipped in the package.

``make quickstart`` trains the ``tiny`` preset offline on the CPU; it needs data and a tokenizer
that need no download. Both live in ``llamactl/assets/`` (see ``llamactl/assets/NOTICE``):

* ``corpus/austen.jsonl.gz``: the six novels, one chapter per JSON line (field ``text``);
* ``tokenizer/``: a byte-level BPE trained on that corpus with :func:`train_embedded_tokenizer`,
  vocabulary 4,096 (the ``tiny`` preset's), special tokens ``<|pad|>``=0, ``<|bos|>``=1 (added in
  front of every encoded text, like Llama tokenizers do), ``<|eos|>``=2, ``<|im_start|>``=3 and
  ``<|im_end|>``=4 (a ChatML chat template, so chat/SFT data works offline too).

:func:`ensure_embedded_dataset` packs the corpus into MDS splits ``train`` and ``val`` with the same
pipeline as ``llamactl prepare-data`` (cached; atomic; a second call returns at once).
"""

from __future__ import annotations

import fcntl
import gzip
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parents[1] / "assets"
CORPUS = ASSETS / "corpus" / "austen.jsonl.gz"
TOKENIZER_DIR = ASSETS / "tokenizer"
VOCAB_SIZE = 4096
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|im_start|>", "<|im_end|>"]  # ids 0..4
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
VAL_FRACTION = 0.04
EMBEDDED_NAME = "llamactl-embedded-austen"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def embedded_tokenizer_dir() -> Path:
    """Folder of the bundled tokenizer; loads with ``AutoTokenizer.from_pretrained(folder)``."""
    return TOKENIZER_DIR


def embedded_corpus() -> Path:
    """The bundled corpus (gzip JSON lines, field ``text``)."""
    return CORPUS


def train_embedded_tokenizer(out_dir: Path = TOKENIZER_DIR, corpus: Path = CORPUS) -> Path:
    """Train the bundled byte-level BPE on the bundled corpus and write a transformers tokenizer folder.

    Run once by the maintainers (the result is committed); kept here so it can be reproduced.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    texts = [json.loads(line)["text"] for line in gzip.open(corpus, "rt", encoding="utf-8")]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B", special_tokens=[("<|bos|>", BOS_ID)])
    assert tok.get_vocab_size() == VOCAB_SIZE, tok.get_vocab_size()
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>", "unk_token": None,
        "add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False,
        "model_max_length": 1024, "chat_template": CHAT_TEMPLATE,
        "extra_special_tokens": {},
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": "<|pad|>",
         "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}, indent=2) + "\n")
    return out_dir


def ensure_embedded_dataset(data_root: Path, *, seq_len: int = 256) -> Path:
    """The bundled corpus packed into MDS splits ``train`` and ``val`` under ``data_root`` (built once).

    Uses the prepare-data pipeline: bundled tokenizer, ``<|bos|>`` text ``<|eos|>`` per chapter,
    concatenated and cut into ``seq_len``-token samples; every 25th chapter goes to ``val``. A file
    lock makes concurrent callers wait for one build; a finished build is reused.

    Returns:
        The dataset folder (``data_root/llamactl-embedded-austen-s<seq_len>``).
    """
    from llamactl.services.prepare_data import CorpusOptions, prepare_corpus

    data_root = Path(data_root).expanduser()
    data_root.mkdir(parents=True, exist_ok=True)
    out = data_root / f"{EMBEDDED_NAME}-s{seq_len}"
    with open(data_root / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        prepare_corpus(CorpusOptions(
            kind="jsonl", paths=[str(CORPUS)], out=str(out), tokenizer=str(TOKENIZER_DIR), field="text",
            concat_tokens=seq_len, eos_text="<|eos|>", bos_text="", val_fraction=VAL_FRACTION,
            train_split="train", val_split="val", workers=0))
    return out
