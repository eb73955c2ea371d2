"""`llamactl eval` end to end on a tiny random model with the SmolLM2 tokenizer: the table, --json,
results files in --out, in a run directory and in ./evals, and one-line errors."""

from __future__ import annotations

import csv
import json

import pytest

from cli_support import run_cli


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("evaldata")
    rows = [{"query": f"Question {i}: what comes after {i}?", "choices": [str(i + 1), str(i + 2), "banana"],
             "gold": 0} for i in range(6)]
    (d / "count.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lm = [{"context": f"{i} {i + 1} {i + 2}", "continuation": f"{i + 3}"} for i in range(5)]
    (d / "seq.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lm))
    (d / "text.txt").write_text("It is a truth universally acknowledged, that a single man in possession of a "
                                "good fortune, must be in want of a wife. " * 20)
    (d / "set.yaml").write_text("icl_tasks:\n- label: counting\n  dataset_uri: count.jsonl\n  num_fewshot: [0, 2]\n"
                                "  icl_task_type: multiple_choice\n  continuation_delimiter: ' Answer: '\n")
    return d


def test_eval_prints_a_table_and_writes_results(tiny_dir, files, tmp_path, capsys):
    out_dir = tmp_path / "res"
    code, out, err = run_cli(["eval", str(tiny_dir), "--tasks", f"{files / 'set.yaml'},{files / 'seq.jsonl'}",
                              "--data", str(files / "text.txt"), "--seq-len", "64", "--out", str(out_dir),
                              "--device", "cpu"], capsys)
    assert code == 0, err
    for word in ("counting", "seq", "accuracy (len-norm)", "chance", "perplexity", "text.txt", "results.json"):
        assert word in out
    saved = json.loads((out_dir / "results.json").read_text())
    assert [(t["task"], t["shots"]) for t in saved["tasks"]] == [("counting", 0), ("counting", 2), ("seq", 0)]
    assert saved["tasks"][0]["chance"] == pytest.approx(1 / 3)
    assert saved["tasks"][2]["acc_norm"] is None and saved["tasks"][2]["n"] == 5
    assert saved["perplexity"][0]["tokens"] > 100 and saved["perplexity"][0]["ppl"] > 1
    rows = list(csv.DictReader(open(out_dir / "results.csv")))
    assert len(rows) == 4 and rows[3]["kind"] == "perplexity"


def test_eval_json_goes_to_stdout(tiny_dir, files, tmp_path, capsys):
    code, out, _ = run_cli(["eval", str(tiny_dir), "-t", str(files / "count.jsonl"), "--num-fewshot", "1",
                            "--out", str(tmp_path / "r"), "--json", "--device", "cpu"], capsys)
    assert code == 0
    data = json.loads(out)
    assert data["tasks"][0]["shots"] == 1 and data["tasks"][0]["n"] == 6
    assert json.loads((tmp_path / "r" / "results.json").read_text())["tasks"] == data["tasks"]


def test_lora_run_dir_is_evaluated_merged_and_results_go_into_it(files, tmp_path, capsys, monkeypatch, shared_data):
    """A real LoRA run (Composer checkpoint): eval loads base + adapter merged, writes RUN_DIR/evals/<ts>/."""
    from convert_support import tiny_config, tiny_pretrained, train_run

    tok = shared_data / "tokenizers" / "smollm2"
    base = tiny_pretrained(tmp_path / "base", tiny_config(vocab_size=49152), tokenizer_from=tok)
    lora = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    run, _ = train_run(tmp_path / "runs", base, lora=lora, steps=2)
    code, out, err = run_cli(["eval", str(run), "-t", str(files / "count.jsonl"), "--json", "--device", "cpu"],
                             capsys)
    assert code == 0, err
    data = json.loads(out)
    assert "LoRA merged" in data["source"]
    assert len(list((run / "evals").glob("*/results.json"))) == 1
    # generate takes the same run directory
    code, out, err = run_cli(["generate", str(run), "-p", "Hello", "-n", "4", "--json", "--device", "cpu"], capsys)
    assert code == 0, err
    assert json.loads(out)["completions"][0]["new_tokens"] == 4
    # a plain model folder without --out: ./evals/<timestamp>/
    monkeypatch.chdir(tmp_path)
    code, _, _ = run_cli(["eval", str(base), "-t", str(files / "count.jsonl"), "--device", "cpu"], capsys)
    assert code == 0
    assert len(list((tmp_path / "evals").glob("*/results.csv"))) == 1


@pytest.mark.parametrize("args, message", [
    (["eval", "/no/such/model", "-t", "x.jsonl"], "not found"),
    (["eval", "{model}"], "nothing to evaluate"),
    (["eval", "{model}", "-t", "nosuchtask", "--task-dir", "{files}"], "unknown task 'nosuchtask'"),
    (["eval", "{model}", "-t", "{files}/broken.jsonl"], "broken.jsonl:2: not valid JSON"),
    (["eval", "{model}", "--data", "{files}/missing.txt"], "does not exist"),
    (["eval", "{model}", "-t", "{files}/count.jsonl", "--num-fewshot", "two"], "--num-fewshot must be integers"),
])
def test_errors_are_one_clear_line(tiny_dir, files, capsys, args, message):
    (files / "broken.jsonl").write_text('{"query": "q", "choices": ["a", "b"], "gold": 0}\n{"query": \n')
    args = [a.replace("{model}", str(tiny_dir)).replace("{files}", str(files)) for a in args] + ["--device", "cpu"]
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_perplexity_on_a_prepared_mds_split(tiny_dir, files, tmp_path, capsys):
    ds = tmp_path / "ds"
    code, _, err = run_cli(["prepare-data", "text", str(files / "text.txt"), "--out", str(ds), "--tokenizer",
                            str(tiny_dir), "--concat-tokens", "32"], capsys)
    assert code == 0, err
    split = next(p for p in ds.iterdir() if (p / "index.json").is_file())
    code, out, err = run_cli(["eval", str(tiny_dir), "--data", str(split), "--seq-len", "32", "--out",
                              str(tmp_path / "r"), "--json", "--device", "cpu"], capsys)
    assert code == 0, err
    p = json.loads(out)["perplexity"][0]
    from llamactl.data.loaders import split_info

    info = split_info(ds, split.name)
    assert p["tokens"] == info.num_samples * 31  # every packed sample: 32 tokens, 31 targets
    assert 1 < p["ppl"] < 1e6
    code, _, err = run_cli(["eval", str(tiny_dir), "--data", str(ds), "--device", "cpu"], capsys)
    assert code == 2 and "not a prepared MDS split" in err


def test_task_names_are_found_through_llamactl_task_dir(tiny_dir, files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LLAMACTL_TASK_DIR", str(files))
    code, out, err = run_cli(["eval", str(tiny_dir), "-t", "count", "--out", str(tmp_path / "r"), "--json",
                              "--device", "cpu"], capsys)
    assert code == 0, err
    assert json.loads(out)["tasks"][0]["task"] == "count"
