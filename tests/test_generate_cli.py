"""`llamactl generate` end to end on a tiny random model with the SmolLM2 tokenizer: streaming,
stats line, seeds, stop strings, JSON, the --chat REPL through a pipe, and errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli_support import run_cli

REPO = Path(__file__).resolve().parents[1]


def test_generate_streams_the_completion_and_ends_with_a_stats_line(tiny_dir, capsys):
    code, out, _ = run_cli(["generate", str(tiny_dir), "--prompt", "Once upon a time", "-n", "12", "--device", "cpu"],
                           capsys)
    assert code == 0
    assert out.startswith("Once upon a time")
    assert re.search(r"prompt 4 tokens · generated 12 tokens · [\d.]+ tokens/s", out)


def test_seeded_sampling_is_reproducible_from_the_cli_and_json_is_parseable(tiny_dir, capsys):
    args = ["generate", str(tiny_dir), "-p", "Hello there", "-p", "The weather today is", "-n", "10",
            "--temperature", "0.9", "--top-p", "0.9", "--seed", "7", "--batch-size", "2", "--json", "--device", "cpu"]
    code, first, _ = run_cli(args, capsys)
    assert code == 0
    a = json.loads(first)
    _, second, _ = run_cli(args, capsys)
    assert json.loads(second)["completions"] == a["completions"]
    assert [c["prompt"] for c in a["completions"]] == ["Hello there", "The weather today is"]
    assert all(c["new_tokens"] == 10 and c["finish_reason"] == "length" for c in a["completions"])
    _, third, _ = run_cli([("8" if a == "7" else a) for a in args], capsys)
    assert json.loads(third)["completions"] != a["completions"]


def test_stop_string_cuts_the_completion(tiny_dir, capsys):
    base = ["generate", str(tiny_dir), "-p", "Hello", "-n", "16", "--json", "--device", "cpu"]
    _, out, _ = run_cli(base, capsys)
    text = json.loads(out)["completions"][0]["text"]
    stop = text[3:6]
    _, out, _ = run_cli(base + ["--stop", stop], capsys)
    c = json.loads(out)["completions"][0]
    assert c["text"] == text[:text.index(stop)] and c["finish_reason"] == "stop"


def test_prompts_file(tiny_dir, tmp_path, capsys):
    f = tmp_path / "prompts.jsonl"
    f.write_text(json.dumps({"prompt": "one\ntwo"}) + "\n" + json.dumps({"prompt": "three"}) + "\n")
    code, out, _ = run_cli(["generate", str(tiny_dir), "--prompts-file", str(f), "-n", "3", "--json",
                            "--device", "cpu"], capsys)
    assert code == 0
    assert [c["prompt"] for c in json.loads(out)["completions"]] == ["one\ntwo", "three"]


@pytest.mark.parametrize("args, message, code", [
    (["generate", "/nonexistent/model", "-p", "hi"], "model '/nonexistent/model' not found", 2),
    (["generate", "{model}", "-p", "word " * 600], "context is 512 tokens; shorten the prompt", 2),
    (["generate", "{model}"], "no prompt given", 2),
    (["generate", "{model}", "-p", "hi", "--top-p", "0"], "top_p must be in (0, 1]", 2),
])
def test_errors_are_one_clear_line(tiny_dir, capsys, args, message, code):
    args = [a.replace("{model}", str(tiny_dir)) for a in args] + ["--device", "cpu"]
    got, out, err = run_cli(args, capsys)
    assert got == code
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_chat_keeps_a_multi_turn_session_over_a_pipe(tiny_dir):
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "llamactl", "generate", str(tiny_dir), "--chat", "-n", "6",
                           "--device", "cpu", "--system", "Be brief."],
                          input="Hello!\nWhat did I just say?\n/exit\nnever read\n", capture_output=True,
                          text=True, env=env, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    turns = re.findall(r"prompt (\d+) tokens · generated (\d+) tokens", proc.stdout)
    assert len(turns) == 2  # /exit ended the session before the third line
    (p1, g1), (p2, _) = [(int(a), int(b)) for a, b in turns]
    # the second prompt holds the system message, the first exchange and the new question
    assert p2 > p1 + g1
    assert proc.stdout.count("assistant>") == 2


def test_chat_without_a_template_is_refused(tiny_dir, tmp_path, capsys):
    plain = tmp_path / "plain"
    shutil.copytree(tiny_dir, plain)
    (plain / "chat_template.jinja").unlink()
    cfg = json.loads((plain / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(cfg))
    code, _, err = run_cli(["generate", str(plain), "--chat", "--device", "cpu"], capsys)
    assert code == 2 and "has no chat template" in err
