"""ICL task files: loading the three formats, rendering prompts, and errors for bad input."""

from __future__ import annotations

import json

import pytest

from llamactl.errors import ConfigError, DataError, UserInputError
from llamactl.evaluation.tasks import load_task, load_task_set, render, resolve_tasks


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


MC = [{"query": "Q: 2+2?", "choices": ["3", "4", "5"], "gold": 1},
      {"query": "Q: colour of the sky?", "choices": ["blue", "green"], "gold": 0},
      {"query": "Q: capital of France?", "choices": ["Rome", "Paris", "Oslo", "Bern"], "gold": 1}]


def test_bigbench_prompt_is_built_with_the_task_prefixes_and_listed_choices(shared_data):
    task = load_task(shared_data / "icl-bigbench" / "general_knowledge.json")
    assert task.kind == "multiple_choice" and task.source == "bigbench" and len(task.items) == 70
    r = render(task, 0)[0]
    assert r.context.startswith("\nQ: How many legs do horses have?\n  choice: ")
    assert r.context.endswith("\nA: ")
    listed = r.context.split("\n  choice: ")[1:]
    listed[-1] = listed[-1][: -len("\nA: ")]
    assert sorted(listed) == sorted(["two", "four", "six", "three", "one", "none"])
    assert r.continuations == ["two", "four", "six", "three", "one", "none"]
    assert r.gold == [1]
    assert task.chance == pytest.approx(sum(len(e.gold) / len(e.choices) for e in task.items) / 70)
    assert any(len(e.gold) > 1 for e in task.items)  # ties for the best score all count as correct


def test_bigbench_task_prefix_and_custom_prefixes_are_used(shared_data):
    task = load_task(shared_data / "icl-bigbench" / "sports_understanding.json", num_fewshot=[2])
    r = render(task, 0)[0]
    assert r.context == ("Determine whether the following statement or statements are plausible or implausible:"
                         "\nStatement: Jamal Murray was perfect from the line\nPlausible/implausible? ")
    two = render(task, 2)[0]
    assert two.context.startswith(task.prompt_string + "\nStatement: ")
    assert two.context.endswith(r.context[len(task.prompt_string):])
    assert two.context.count("Plausible/implausible? ") == 3


def test_icl_jsonl_multiple_choice_few_shot_layout(tmp_path):
    task = load_task(_jsonl(tmp_path / "mc.jsonl", MC), prompt_string="Answer:", continuation_delimiter=" A:",
                     example_delimiter="\n\n")
    zero = render(task, 0)
    assert zero[0].context == "Answer:\n\nQ: 2+2? A:"
    assert zero[0].continuations == ["3", "4", "5"] and zero[0].gold == [1]
    two = render(task, 2)
    shots = two[0].context.split("\n\n")
    assert shots[0] == "Answer:" and shots[-1] == "Q: 2+2? A:"
    assert set(shots[1:3]) == {"Q: colour of the sky? A:blue", "Q: capital of France? A:Paris"}
    assert render(task, 2)[0].context == two[0].context  # seeded: same prompt every time


def test_language_modelling_format(tmp_path):
    rows = [{"context": "The cat sat on the", "continuation": "mat"}, {"context": "One, two,", "continuation": "three"}]
    task = load_task(_jsonl(tmp_path / "lm.jsonl", rows))
    assert task.kind == "language_modeling" and task.chance is None
    r = render(task, 1)
    assert r[0].context == "One, two, three\nThe cat sat on the "
    assert r[0].continuations == ["mat"]


def test_task_set_yaml_like_llm_foundry(tmp_path, shared_data):
    _jsonl(tmp_path / "mc.jsonl", MC)
    (tmp_path / "tasks.yaml").write_text(f"""
icl_tasks:
- label: arith
  dataset_uri: mc.jsonl
  num_fewshot: [0, 1]
  icl_task_type: multiple_choice
  continuation_delimiter: " Answer: "
  batch_size: 4
- label: gk
  dataset_uri: {shared_data / 'icl-bigbench' / 'general_knowledge.json'}
  num_fewshot: 0
""")
    tasks = load_task_set(tmp_path / "tasks.yaml")
    assert [(t.label, t.num_fewshot) for t in tasks] == [("arith", [0, 1]), ("gk", [0])]
    assert render(tasks[0], 0)[0].context == "Q: 2+2? Answer: "


@pytest.mark.parametrize("rows, message", [
    ([{"query": "x", "choices": ["a"], "gold": 0}], "at least two"),
    ([{"query": "x", "choices": ["a", "b"], "gold": 2}], "'gold' must be an index"),
    ([{"question": "x"}], "expected LLM Foundry ICL keys"),
])
def test_malformed_jsonl_tasks_name_the_problem(tmp_path, rows, message):
    with pytest.raises(DataError, match=message):
        load_task(_jsonl(tmp_path / "bad.jsonl", rows))


def test_malformed_files_name_line_and_fix(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "x", "choices": ["a", "b"], "gold": 0}\n{not json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        load_task(bad)
    bb = tmp_path / "bb.json"
    bb.write_text(json.dumps({"examples": [{"input": "x", "target": "y"}]}))
    with pytest.raises(DataError, match="generative BIG-bench tasks are not supported"):
        load_task(bb)
    y = tmp_path / "t.yaml"
    y.write_text("icl_tasks:\n- label: a\n  dataset_uri: mc.jsonl\n  shots: 3\n")
    with pytest.raises(ConfigError, match="unknown key\\(s\\) shots"):
        load_task_set(y)
    y.write_text("icl_tasks:\n- label: a\n  dataset_uri: mc.jsonl\n  icl_task_type: schema\n")
    with pytest.raises(ConfigError, match="schema"):
        load_task_set(y)


def test_unknown_task_lists_what_is_there(shared_data):
    with pytest.raises(UserInputError, match="unknown task 'general_knowlege'.*general_knowledge"):
        resolve_tasks(["general_knowlege"], [shared_data / "icl-bigbench"], [0])
    found = resolve_tasks(["general_knowledge", "physical_intuition"], [shared_data / "icl-bigbench"], [0, 3])
    assert [t.label for t in found] == ["general_knowledge", "physical_intuition"]
    assert found[0].num_fewshot == [0, 3]


def test_too_many_shots_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="too few for 3 shots"):
        load_task(_jsonl(tmp_path / "mc.jsonl", MC), num_fewshot=[3])
