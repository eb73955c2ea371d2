"""In-context-learning tasks: loading, validating and rendering them into prompts.

Three inputs are understood:

* LLM Foundry ICL jsonl — multiple choice (``{"query", "choices", "gold"}``) and language
  modelling (``{"context", "continuation"}``), one JSON object per line;
* BIG-bench ``task.json`` — ``examples: [{"input", "target_scores"}]`` with the task's own
  ``task_prefix`` / ``example_input_prefix`` / ``example_output_prefix`` / ``choice_prefix`` /
  ``append_choices_to_input`` / ``few_shot_example_separator`` (BIG-bench's defaults when absent);
* a task-set YAML in the shape of LLM Foundry's ``icl_tasks`` (label, dataset_uri, num_fewshot,
  icl_task_type, prompt_string, example_delimiter, continuation_delimiter).

Rendering gives, per example, a context string and the candidate continuations; few-shot
examples are drawn from the other examples of the task with a seeded generator, so a run is
reproducible and each example's prompt does not depend on which others are evaluated.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from llamactl.errors import ConfigError, DataError, UserInputError

TaskKind = Literal["multiple_choice", "language_modeling"]

# BIG-bench's json_task defaults (bigbench/api/json_task.py).
_BB_INPUT_PREFIX = "\nQ: "
_BB_OUTPUT_PREFIX = "\nA: "
_BB_CHOICE_PREFIX = "\n  choice: "
_BB_SEPARATOR = "\n"

# LLM Foundry icl_tasks keys that we accept and do not need.
_IGNORED_KEYS = {"batch_size", "has_categories", "max_seq_len", "metric_names", "pad_tok_id", "early_stopping_criteria",
                 "do_normalization", "cot_delimiter", "pass_at_k", "generations_per_sample"}
_KNOWN_KEYS = {"label", "dataset_uri", "num_fewshot", "icl_task_type", "prompt_string", "example_delimiter",
               "continuation_delimiter", "fewshot_random_seed"} | _IGNORED_KEYS
_TASK_TYPES = {"multiple_choice": "multiple_choice", "language_modeling": "language_modeling"}


@dataclass
class Item:
    """One example as loaded: a query, candidate answers and which of them are correct."""

    query: str  # MC: the question (BIG-bench: the formatted input, choices listed if asked); LM: the context
    choices: list[str]  # LM tasks: exactly one, the continuation
    gold: list[int]  # indices into choices that count as correct


@dataclass
class Task:
    """A loaded task: its items and how to render them."""

    label: str
    path: Path
    kind: TaskKind
    source: Literal["icl_jsonl", "bigbench"]
    items: list[Item]
    num_fewshot: list[int] = field(default_factory=lambda: [0])
    prompt_string: str = ""
    example_delimiter: str = "\n"
    continuation_delimiter: str = " "
    fewshot_seed: int = 1234

    @property
    def chance(self) -> float | None:
        """Expected accuracy of a uniform random guess (None for language-modelling tasks)."""
        if self.kind != "multiple_choice":
            return None
        return sum(len(it.gold) / len(it.choices) for it in self.items) / len(self.items)


@dataclass
class Rendered:
    """One example ready to score: the context and the candidate continuations."""

    context: str
    continuations: list[str]
    gold: list[int]


# --------------------------------------------------------------------------------------- loaders
def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not valid JSON ({e.msg}); each line must be one JSON object") from e
        if not isinstance(row, dict):
            raise DataError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    if not rows:
        raise DataError(f"{path} has no examples")
    return rows


def _load_icl_jsonl(path: Path, kind: TaskKind | None) -> tuple[TaskKind, list[Item]]:
    rows = _read_jsonl(path)
    if kind is None:
        first = rows[0]
        if {"query", "choices", "gold"} <= set(first):
            kind = "multiple_choice"
        elif {"context", "continuation"} <= set(first):
            kind = "language_modeling"
        else:
            raise DataError(f"{path}:1: expected LLM Foundry ICL keys query/choices/gold (multiple choice) or "
                            f"context/continuation (language modelling), got {', '.join(sorted(first)) or 'none'}")
    items = []
    for n, row in enumerate(rows, 1):
        where = f"{path} example {n}"
        if kind == "multiple_choice":
            q, ch, gold = row.get("query"), row.get("choices"), row.get("gold")
            if not isinstance(q, str):
                raise DataError(f"{where}: 'query' must be a string")
            if not isinstance(ch, list) or len(ch) < 2 or not all(isinstance(c, str) and c for c in ch):
                raise DataError(f"{where}: 'choices' must be a list of at least two non-empty strings")
            if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(ch):
                raise DataError(f"{where}: 'gold' must be an index into choices (0..{len(ch) - 1}), got {gold!r}")
            items.append(Item(q, list(ch), [gold]))
        else:
            ctx, cont = row.get("context"), row.get("continuation")
            if not isinstance(ctx, str) or not isinstance(cont, str) or not cont:
                raise DataError(f"{where}: 'context' and 'continuation' must be strings (continuation non-empty)")
            items.append(Item(ctx, [cont], [0]))
    return kind, items


def _load_bigbench(path: Path) -> tuple[list[Item], dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); expected a BIG-bench task.json") from e
    if not isinstance(data, dict) or not isinstance(data.get("examples"), list) or not data["examples"]:
        raise DataError(f"{path}: a BIG-bench task.json needs a non-empty 'examples' list")
    input_prefix = data.get("example_input_prefix", _BB_INPUT_PREFIX)
    output_prefix = data.get("example_output_prefix", _BB_OUTPUT_PREFIX)
    choice_prefix = data.get("choice_prefix", _BB_CHOICE_PREFIX)
    append = bool(data.get("append_choices_to_input", True))
    rng = random.Random(0)  # fixes the order choices are listed in, as BIG-bench's seeded permutation does
    items = []
    for n, ex in enumerate(data["examples"], 1):
        scores = ex.get("target_scores") if isinstance(ex, dict) else None
        if not isinstance(ex, dict) or not isinstance(ex.get("input"), str):
            raise DataError(f"{path} example {n}: needs an 'input' string")
        if not isinstance(scores, dict) or len(scores) < 2:
            raise DataError(f"{path} example {n}: needs 'target_scores' with at least two choices "
                            f"(generative BIG-bench tasks are not supported)")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scores.values()):
            raise DataError(f"{path} example {n}: 'target_scores' values must be numbers")
        choices = list(scores)
        best = max(scores.values())
        gold = [i for i, c in enumerate(choices) if scores[c] == best]
        text = ex["input"]
        if append:
            listed = sorted(choices)
            rng.shuffle(listed)
            text = text + choice_prefix + choice_prefix.join(listed)
        items.append(Item(input_prefix + text + output_prefix, choices, gold))
    meta = {"task_prefix": data.get("task_prefix", ""),
            "separator": data.get("few_shot_example_separator", _BB_SEPARATOR)}
    return items, meta


def load_task(path: str | Path, *, label: str | None = None, kind: str | None = None,
              num_fewshot: list[int] | None = None, prompt_string: str | None = None,
              example_delimiter: str | None = None, continuation_delimiter: str | None = None,
              fewshot_seed: int = 1234) -> Task:
    """Load one task file (``.jsonl`` LLM Foundry ICL, ``.json`` BIG-bench task)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"task file {path} does not exist")
    if kind is not None and kind not in _TASK_TYPES:
        raise ConfigError(f"icl_task_type {kind!r} is not supported; use multiple_choice or language_modeling")
    name = label or path.stem
    shots = [0] if num_fewshot is None else list(num_fewshot)
    if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in shots) or not shots:
        raise ConfigError(f"num_fewshot for task {name!r} must be non-negative integers, got {num_fewshot!r}")
    if path.suffix == ".json":
        items, meta = _load_bigbench(path)
        task = Task(name, path, "multiple_choice", "bigbench", items, shots,
                    prompt_string=meta["task_prefix"] if prompt_string is None else prompt_string,
                    example_delimiter=meta["separator"] if example_delimiter is None else example_delimiter,
                    continuation_delimiter="" if continuation_delimiter is None else continuation_delimiter,
                    fewshot_seed=fewshot_seed)
    elif path.suffix == ".jsonl":
        task_kind, items = _load_icl_jsonl(path, kind)  # type: ignore[arg-type]
        task = Task(name, path, task_kind, "icl_jsonl", items, shots,
                    prompt_string=prompt_string or "",
                    example_delimiter="\n" if example_delimiter is None else example_delimiter,
                    continuation_delimiter=" " if continuation_delimiter is None else continuation_delimiter,
                    fewshot_seed=fewshot_seed)
    else:
        raise DataError(f"task file {path} has an unknown format; use .jsonl (LLM Foundry ICL) or .json (BIG-bench)")
    too_many = [s for s in shots if s >= len(task.items)]
    if too_many:
        raise ConfigError(f"task {name!r} has {len(task.items)} examples, too few for {max(too_many)} shots")
    return task


def load_task_set(path: str | Path) -> list[Task]:
    """Load an LLM Foundry-style task-set YAML (``icl_tasks: [{label, dataset_uri, ...}]``).

    ``dataset_uri`` is resolved relative to the YAML's folder.
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from e
    entries = data.get("icl_tasks") if isinstance(data, dict) else data
    if isinstance(entries, str):  # LLM Foundry allows icl_tasks: path/to/tasks.yaml
        return load_task_set((path.parent / entries).resolve())
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path} must contain a non-empty 'icl_tasks' list of tasks")
    tasks = []
    for n, e in enumerate(entries, 1):
        if not isinstance(e, dict):
            raise ConfigError(f"{path}: icl_tasks entry {n} must be a mapping with label and dataset_uri")
        unknown = sorted(set(e) - _KNOWN_KEYS)
        if unknown:
            raise ConfigError(f"{path}: icl_tasks entry {n} has unknown key(s) {', '.join(unknown)}; "
                              f"known keys are {', '.join(sorted(_KNOWN_KEYS - _IGNORED_KEYS))}")
        if "dataset_uri" not in e:
            raise ConfigError(f"{path}: icl_tasks entry {n} needs a dataset_uri (the task file)")
        kind = e.get("icl_task_type")
        if kind is not None and kind not in _TASK_TYPES:
            raise ConfigError(f"{path}: icl_task_type {kind!r} of entry {n} is not supported; "
                              f"use multiple_choice or language_modeling")
        shots = e.get("num_fewshot", [0])
        shots = [shots] if isinstance(shots, int) else shots
        uri = Path(str(e["dataset_uri"]))
        tasks.append(load_task(uri if uri.is_absolute() else path.parent / uri, label=e.get("label"), kind=kind,
                               num_fewshot=list(shots), prompt_string=e.get("prompt_string"),
                               example_delimiter=e.get("example_delimiter"),
                               continuation_delimiter=e.get("continuation_delimiter"),
                               fewshot_seed=int(e.get("fewshot_random_seed", 1234))))
    return tasks


def resolve_tasks(names: list[str], task_dirs: list[Path], num_fewshot: list[int]) -> list[Task]:
    """Tasks from ``--tasks`` entries: file paths (.json, .jsonl), task-set YAMLs, or names of
    ``<name>.json`` / ``<name>.jsonl`` files in ``task_dirs``."""
    tasks: list[Task] = []
    for name in names:
        p = Path(name)
        if p.suffix in (".yaml", ".yml"):
            if not p.is_file():
                raise UserInputError(f"task-set file {p} does not exist")
            tasks.extend(load_task_set(p))
            continue
        if p.suffix in (".json", ".jsonl"):
            if not p.is_file():
                raise UserInputError(f"task file {p} does not exist")
            tasks.append(load_task(p, num_fewshot=num_fewshot))
            continue
        found = [d / f"{name}{ext}" for d in task_dirs for ext in (".json", ".jsonl") if (d / f"{name}{ext}").is_file()]
        if not found:
            avail = sorted({f.stem for d in task_dirs if d.is_dir() for f in d.iterdir()
                            if f.suffix in (".json", ".jsonl")})
            where = ", ".join(str(d) for d in task_dirs) or "no task directory"
            hint = f"known tasks in {where}: {', '.join(avail)}" if avail else f"no tasks found in {where}"
            raise UserInputError(f"unknown task {name!r} ({hint}); pass a .json/.jsonl/.yaml path or --task-dir")
        tasks.append(load_task(found[0], num_fewshot=num_fewshot))
    labels = [t.label for t in tasks]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise UserInputError(f"task label(s) {', '.join(dup)} given more than once; give each task once")
    return tasks


# -------------------------------------------------------------------------------------- render
def _shot_text(task: Task, item: Item) -> str:
    return item.query + task.continuation_delimiter + item.choices[item.gold[0]]


def render(task: Task, shots: int) -> list[Rendered]:
    """Every example of ``task`` as (context, continuations, gold) with ``shots`` solved examples
    before it.

    LLM Foundry layout: ``prompt_string``, then the shots and the query, each preceded by
    ``example_delimiter`` when anything precedes it; the query ends with ``continuation_delimiter``.
    BIG-bench layout: ``task_prefix`` + shots and query joined by ``few_shot_example_separator``
    (each query already ends with the output prefix, e.g. ``"\\nA: "``).
    """
    out = []
    n = len(task.items)
    for i, item in enumerate(task.items):
        parts: list[str] = []
        if shots:
            rng = random.Random(task.fewshot_seed * 1_000_003 + i)
            others = rng.sample([j for j in range(n) if j != i], shots)
            parts = [_shot_text(task, task.items[j]) for j in others]
        parts.append(item.query + task.continuation_delimiter)
        if task.source == "bigbench":
            context = task.prompt_string + task.example_delimiter.join(parts)
        else:
            context = task.prompt_string
            for part in parts:
                context += (task.example_delimiter if context else "") + part
        out.append(Rendered(context, list(item.choices), list(item.gold)))
    return out
