"""``llamactl convert`` and ``llamactl models`` from the command line: results as a table or JSON,
bad input as one red line and exit code 2."""

from __future__ import annotations

import json

import pytest

from convert_support import tiny_config, tiny_pretrained, train_run
from llamactl.cli import main


def _run(args, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    base = tiny_pretrained(root / "base")
    run, _ = train_run(root / "runs", base, lora={"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}, steps=2)
    return root, base, run


def test_convert_lora_run_table_and_json(lora_run, tmp_path, capsys):
    root, base, run = lora_run
    main(["convert", str(run), str(tmp_path / "adapter")])
    out = capsys.readouterr().out
    assert "PEFT adapter folder" in out and "adapter_model.safetensors" in out and "2/2 lora_B" in out
    main(["convert", str(run), str(tmp_path / "merged"), "--merge", "--dtype", "bf16", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert data["to"] == "hf" and data["dtype"] == "bf16" and data["merged"] is True


@pytest.mark.parametrize("case", ["missing_checkpoint", "base_not_found", "different_base", "unknown_dtype",
                                  "output_exists", "bad_to"])
def test_convert_errors_are_one_line(lora_run, tmp_path, capsys, case):
    root, base, run = lora_run
    out = str(tmp_path / "out")
    args, text = {
        "missing_checkpoint": (["convert", str(tmp_path / "ghost-run"), out], "not found"),
        "base_not_found": (["convert", str(run), out, "--base", str(tmp_path / "no-base")], "--base"),
        "different_base": (["convert", str(run), out, "--merge", "--base",
                            str(tiny_pretrained(tmp_path / "other", tiny_config(hidden_size=96)))],
                           "hidden_size"),
        "unknown_dtype": (["convert", str(run), out, "--dtype", "int3"], "unknown dtype 'int3'"),
        "output_exists": (["convert", str(run), str(root)], "overwrite the source"),
        "bad_to": (["convert", str(run), out, "--to", "onnx"], "onnx"),
    }[case]
    code, stdout, stderr = _run(args, capsys)
    assert code == 2, stderr
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert text in stderr and "Traceback" not in stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr


def test_output_exists_is_refused(lora_run, tmp_path, capsys):
    root, base, run = lora_run
    (tmp_path / "taken").mkdir()
    code, _, stderr = _run(["convert", str(run), str(tmp_path / "taken")], capsys)
    assert code == 2 and "already exists" in stderr and "--overwrite" in stderr


def test_models_list(capsys):
    main(["models", "list", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in data] == ["smollm2-135m"]
    code, _, stderr = _run(["models", "import", "gpt-5"], capsys)
    assert code == 2 and "unknown model 'gpt-5'" in stderr


@pytest.mark.slow
def test_models_import_smollm2(smollm2_dir, tmp_path, capsys):
    """The import writes the same HF folder as the test fixture (same wheel, same dequantisation)."""
    from safetensors.torch import load_file

    main(["models", "import", "smollm2-135m", "--out", str(tmp_path / "smol")])
    assert "imported at" in capsys.readouterr().out
    ours, ref = load_file(str(tmp_path / "smol" / "model.safetensors")), load_file(str(smollm2_dir /
                                                                                         "model.safetensors"))
    assert ours.keys() == ref.keys() and all((ours[k] == ref[k]).all() for k in ours)
    assert (tmp_path / "smol" / "tokenizer.json").is_file()
    code, _, stderr = _run(["models", "import", "smollm2-135m", "--out", str(tmp_path / "smol")], capsys)
    assert code == 2 and "already exists" in stderr
