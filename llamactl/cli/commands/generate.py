"""``llamactl generate``."""

from __future__ import annotations

from typing import Optional

import typer


def generate_cmd(
    model: str = typer.Argument(..., help="Model folder (Hugging Face layout) or run directory."),
    prompt: Optional[list[str]] = typer.Option(None, "--prompt", "-p", help="Prompt text; repeatable."),
    prompts_file: Optional[str] = typer.Option(
        None, "--prompts-file", help="One prompt per line (.txt) or {\"prompt\": ...} per line (.jsonl)."),
    chat: bool = typer.Option(False, "--chat", help="Multi-turn chat through the tokenizer's chat template."),
    system: Optional[str] = typer.Option(None, "--system", help="System message for --chat."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", help="Tokens to generate at most."),
    greedy: bool = typer.Option(False, "--greedy", help="Always take the most likely token (same as --temperature 0)."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy; e.g. 0.7 to sample."),
    top_k: int = typer.Option(0, "--top-k", help="Sample from the k most likely tokens (0 = off)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling threshold (1 = off)."),
    repetition_penalty: float = typer.Option(1.0, "--repetition-penalty", help="> 1 discourages repeats (1 = off)."),
    stop: Optional[list[str]] = typer.Option(None, "--stop", help="Stop string; repeatable."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for sampling (reproducible output)."),
    batch_size: int = typer.Option(1, "--batch-size", help="Prompts generated together (1 streams each prompt)."),
    decode_mode: str = typer.Option("auto", "--decode-mode", help="auto, eager, graph (CUDA graph) or compile."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="fp32, bf16 or fp16 (default bf16 on GPU, else fp32)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: cuda if available)."),
    json_out: bool = typer.Option(False, "--json", help="Print completions and speed as JSON (no streaming)."),
) -> None:
    """Generate text: streamed completions for prompts, or a chat session (--chat)."""
    from llamactl.cli import render
    from llamactl.generation.sampling import SamplingConfig
    from llamactl.services.generate import GenerateRequest, run_generate, start_chat

    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0 if greedy else temperature,
                              top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                              stop=list(stop or []), seed=seed)
    req = GenerateRequest(model=model, prompts=list(prompt or []), prompts_file=prompts_file, sampling=sampling,
                          batch_size=batch_size, mode=decode_mode, dtype=dtype, device=device, system=system)
    if chat:
        session = start_chat(req)
        render.chat_banner(session.im.source)
        while (text := render.chat_input()) is not None:
            if text.strip() in ("/exit", "/quit"):
                break
            if text.strip():
                render.chat_reply_prefix()
                reply = session.send(text, on_text=render.stream_text)
                render.stream_end()
                render.generation_stats(reply.prompt_tokens, reply.new_tokens, session.last_seconds)
        return
    if json_out:
        render.print_json(run_generate(req).to_dict())
        return
    stream = batch_size == 1
    result = run_generate(req, on_text=(lambda _i, piece: render.stream_text(piece)) if stream else None,
                          on_start=render.prompt_header if stream else None)
    render.completions(result, streamed=stream)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_cmd)
