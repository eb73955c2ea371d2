"""``llamactl/model/`` is pure PyTorch: it imports torch and the standard library only, so the inner
model can be lifted into any training stack (and compiled) without dragging a framework along."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parents[1] / "llamactl" / "model"
BANNED = ("composer", "transformers", "peft", "yaml", "typer", "rich", "omegaconf", "streaming", "safetensors",
          "llamactl.interop", "llamactl.training", "llamactl.services", "llamactl.cli")


def _imports(path: Path) -> list[tuple[int, str]]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append((node.lineno, node.module))
    return names


def _banned(module: str) -> bool:
    return any(module == b or module.startswith(b + ".") for b in BANNED)


def test_model_sources_import_no_framework() -> None:
    files = sorted(MODEL_DIR.rglob("*.py"))
    assert len(files) >= 5
    offenders = [f"{f.relative_to(MODEL_DIR.parent.parent)}:{line} imports {mod}"
                 for f in files for line, mod in _imports(f) if _banned(mod)]
    assert not offenders, "\n".join(offenders)


def test_importing_the_model_loads_no_framework() -> None:
    """Catches indirect imports too (a helper module that pulls in transformers)."""
    code = ("import sys, llamactl.model, llamactl.model.presets\n"
            "from llamactl.model import Llama, LlamaConfig\n"
            "Llama(LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1,"
            " num_attention_heads=2))\n"
            f"banned = {BANNED!r}\n"
            "print('\\n'.join(sorted(m for m in sys.modules"
            " if any(m == b or m.startswith(b + '.') for b in banned))))\n")
    root = str(MODEL_DIR.parent.parent)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                          env={"PYTHONPATH": root, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"llamactl.model pulled in: {proc.stdout.split()}"
