"""``llamactl prepare-data``: c4 | text | jsonl | parquet | chat | sft | info."""

from __future__ import annotations

from typing import List, Optional

import typer

sub = typer.Typer(help="Tokenize and pack data into MDS shards for training (C4, local corpora, chat/SFT).",
                  no_args_is_help=True)

_OUT = "Output dataset folder (one sub-folder per split)."
_TOK = "Tokenizer: a hub id or a local folder holding tokenizer.json."
_SEQ = "Tokens per packed sample."
_WORKERS = "Tokenizer processes (default: one per core; small inputs are tokenized in-process)."
_COMP = "Shard compression: zstd, gz, bz2 (default: none)."
_OVER = "Replace splits of OUT prepared with other settings."
_EOS = "Text appended to every document (default: the tokenizer's EOS unless it marks documents itself)."
_BOS = "Text put before every document."
_JSON = "Print the result as JSON."
_ENGINE = ("Tokenizer engine: auto (tiktoken where it reproduces the tokenizer exactly, checked as it runs), "
           "tiktoken, or tokenizers.")


def _samples(n: Optional[int]) -> Optional[int]:
    return None if n is None or n == 0 else n


def _run(fn, opts, json_out: bool) -> None:
    from dataclasses import asdict

    from llamactl.cli import render

    if json_out:
        result = fn(opts)
        render.print_json(asdict(result))
        return
    with render.prepare_progress() as progress:
        result = fn(opts, progress=progress)
    render.prepare_result(result)


@sub.command("c4")
def c4(
    out: str = typer.Option("datasets/c4_small", "--out", help=_OUT),
    tokenizer: str = typer.Option("meta-llama/Llama-3.2-1B", "--tokenizer", help=_TOK),
    source: Optional[str] = typer.Option(None, "--source", help="Local folder laid out like allenai/c4 "
                                         "(en/c4-train.*.json.gz); default: stream from the hub."),
    subset: str = typer.Option("en", "--subset", help="C4 variant folder."),
    splits: List[str] = typer.Option(["train_small", "val_small"], "--split",
                                     help="Output split (repeat): train_small, val_small, train, val..."),
    train_samples: int = typer.Option(100_000, "--train-samples", help="Packed samples in train splits (0: all)."),
    val_samples: int = typer.Option(10_000, "--val-samples", help="Packed samples in validation splits (0: all)."),
    concat_tokens: int = typer.Option(2048, "--concat-tokens", help=_SEQ),
    bos_text: str = typer.Option("", "--bos-text", help=_BOS),
    eos_text: Optional[str] = typer.Option(None, "--eos-text", help=_EOS),
    no_wrap: bool = typer.Option(False, "--no-wrap", help="Never carry a document's remainder into the next sample."),
    no_special_tokens: bool = typer.Option(False, "--no-special-tokens",
                                           help="Do not let the tokenizer add its own BOS/EOS."),
    compression: Optional[str] = typer.Option(None, "--compression", help=_COMP),
    workers: Optional[int] = typer.Option(None, "--workers", help=_WORKERS),
    overwrite: bool = typer.Option(False, "--overwrite", help=_OVER),
    engine: str = typer.Option("auto", "--engine", help=_ENGINE),
    json_out: bool = typer.Option(False, "--json", help=_JSON),
) -> None:
    """C4 (allenai/c4, from the hub or --source) to packed MDS splits train_small / val_small."""
    from llamactl.services.prepare_data import C4Options, prepare_c4

    opts = C4Options(out=out, tokenizer=tokenizer, source=source, subset=subset, splits=tuple(splits),
                     train_samples=_samples(train_samples), val_samples=_samples(val_samples),
                     concat_tokens=concat_tokens, bos_text=bos_text, eos_text=eos_text, no_wrap=no_wrap,
                     add_special_tokens=not no_special_tokens, compression=compression, workers=workers,
                     overwrite=overwrite, engine=engine)
    _run(prepare_c4, opts, json_out)


def _corpus(kind: str):
    def command(
        paths: List[str] = typer.Argument(..., help="Input files or folders."),
        out: str = typer.Option(..., "--out", help=_OUT),
        tokenizer: str = typer.Option("meta-llama/Llama-3.2-1B", "--tokenizer", help=_TOK),
        field: str = typer.Option("text", "--field", help="JSON/parquet field holding the text."),
        unit: str = typer.Option("file", "--unit", help="Plain text: one document per file, line or paragraph."),
        val_fraction: float = typer.Option(0.0, "--val-fraction",
                                           help="Fraction of documents for the validation split."),
        val_files: List[str] = typer.Option([], "--val-file", help="Files for the validation split (repeat)."),
        train_split: str = typer.Option("train", "--train-split", help="Name of the train split."),
        val_split: str = typer.Option("val", "--val-split", help="Name of the validation split."),
        train_samples: int = typer.Option(0, "--train-samples",
                                          help="Stop the train split at this many samples (0: all)."),
        val_samples: int = typer.Option(0, "--val-samples", help="Stop the validation split at this many (0: all)."),
        concat_tokens: int = typer.Option(2048, "--concat-tokens", help=_SEQ),
        bos_text: str = typer.Option("", "--bos-text", help=_BOS),
        eos_text: Optional[str] = typer.Option(None, "--eos-text", help=_EOS),
        no_wrap: bool = typer.Option(False, "--no-wrap",
                                     help="Never carry a document's remainder into the next sample."),
        no_special_tokens: bool = typer.Option(False, "--no-special-tokens",
                                               help="Do not let the tokenizer add its own BOS/EOS."),
        compression: Optional[str] = typer.Option(None, "--compression", help=_COMP),
        workers: Optional[int] = typer.Option(None, "--workers", help=_WORKERS),
        overwrite: bool = typer.Option(False, "--overwrite", help=_OVER),
        engine: str = typer.Option("auto", "--engine", help=_ENGINE),
        json_out: bool = typer.Option(False, "--json", help=_JSON),
    ) -> None:
        from llamactl.services.prepare_data import CorpusOptions, prepare_corpus

        opts = CorpusOptions(kind=kind, paths=list(paths), out=out, tokenizer=tokenizer, field=field, unit=unit,
                             val_fraction=val_fraction, val_paths=list(val_files), train_split=train_split,
                             val_split=val_split, train_samples=_samples(train_samples),
                             val_samples=_samples(val_samples), concat_tokens=concat_tokens, bos_text=bos_text,
                             eos_text=eos_text, no_wrap=no_wrap, add_special_tokens=not no_special_tokens,
                             compression=compression, workers=workers, overwrite=overwrite, engine=engine)
        _run(prepare_corpus, opts, json_out)

    command.__doc__ = {"text": "Plain-text files to packed MDS splits.",
                       "jsonl": "JSON-lines files (.jsonl/.json[.gz]) to packed MDS splits.",
                       "parquet": "Parquet files (needs pyarrow) to packed MDS splits."}[kind]
    return command


for _kind in ("text", "jsonl", "parquet"):
    sub.command(_kind)(_corpus(_kind))


def _instruct(mode: str):
    def command(
        paths: List[str] = typer.Argument(..., help="JSON-lines files or folders."),
        out: str = typer.Option(..., "--out", help=_OUT),
        tokenizer: str = typer.Option("meta-llama/Llama-3.2-1B", "--tokenizer", help=_TOK),
        messages_field: str = typer.Option("messages", "--messages-field", help="chat: field holding the messages."),
        prompt_field: str = typer.Option("prompt", "--prompt-field", help="sft: field holding the prompt."),
        response_field: str = typer.Option("response", "--response-field", help="sft: field holding the response."),
        chat_template: bool = typer.Option(mode == "chat", "--chat-template/--no-chat-template",
                                           help="sft: render pairs with the tokenizer's chat template."),
        train_on_prompt: bool = typer.Option(False, "--train-on-prompt",
                                             help="Take the loss on prompts too (default: responses only)."),
        no_pack: bool = typer.Option(False, "--no-pack", help="One example per sample (padded) instead of packing."),
        overflow: str = typer.Option("truncate", "--overflow",
                                     help="Examples longer than --seq-len: truncate or drop."),
        val_fraction: float = typer.Option(0.0, "--val-fraction",
                                           help="Fraction of examples for the validation split."),
        val_files: List[str] = typer.Option([], "--val-file", help="Files for the validation split (repeat)."),
        train_split: str = typer.Option("train", "--train-split", help="Name of the train split."),
        val_split: str = typer.Option("val", "--val-split", help="Name of the validation split."),
        seq_len: int = typer.Option(2048, "--seq-len", "--concat-tokens", help=_SEQ),
        compression: Optional[str] = typer.Option(None, "--compression", help=_COMP),
        workers: Optional[int] = typer.Option(None, "--workers", help=_WORKERS),
        overwrite: bool = typer.Option(False, "--overwrite", help=_OVER),
        json_out: bool = typer.Option(False, "--json", help=_JSON),
    ) -> None:
        from llamactl.services.prepare_data import SFTOptions, prepare_sft

        opts = SFTOptions(mode=mode, paths=list(paths), out=out, tokenizer=tokenizer, messages_field=messages_field,
                          prompt_field=prompt_field, response_field=response_field, chat_template=chat_template,
                          mask_prompt=not train_on_prompt, pack=not no_pack, overflow=overflow,
                          val_fraction=val_fraction, val_paths=list(val_files), train_split=train_split,
                          val_split=val_split, seq_len=seq_len, compression=compression, workers=workers,
                          overwrite=overwrite)
        _run(prepare_sft, opts, json_out)

    command.__doc__ = {"chat": "Chat data (a `messages` list per line) to packed, loss-masked MDS splits.",
                       "sft": "Prompt/response pairs to packed, loss-masked MDS splits."}[mode]
    return command


sub.command("chat")(_instruct("chat"))
sub.command("sft")(_instruct("sft"))


@sub.command("info")
def info(
    path: str = typer.Argument(..., help="A prepared dataset folder."),
    split: Optional[str] = typer.Option(None, "--split", help="Split to show a sample of (default: the first)."),
    sample: int = typer.Option(0, "--sample", help="Index of the sample to decode."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Tokenizer to decode with (default: recorded)."),
    json_out: bool = typer.Option(False, "--json", help=_JSON),
) -> None:
    """Splits, samples, tokens, tokenizer, sequence length and a decoded sample of a prepared dataset."""
    from dataclasses import asdict

    from llamactl.cli import render
    from llamactl.services.prepare_data import dataset_info

    result = dataset_info(path, split=split, sample=sample, tokenizer=tokenizer)
    if json_out:
        render.print_json(asdict(result))
    else:
        render.dataset_info(result)


def register(app: typer.Typer) -> None:
    app.add_typer(sub, name="prepare-data")
