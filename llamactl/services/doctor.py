"""``llamactl doctor``: what is installed, what the hardware is, and what is known to break."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import os
import platform
from dataclasses import dataclass, field

from llamactl.secrets import TOKEN_ENV_VARS

_PACKAGES = ["torch", "transformers", "mosaicml", "peft", "mosaicml-streaming", "tokenizers", "safetensors",
             "torchvision", "numpy", "gguf"]


@dataclass
class DoctorReport:
    python: str
    packages: dict[str, str | None]
    cuda: str | None
    gpus: list[str]
    optional: dict[str, bool]
    hf_token_set: str | None  # the variable's name, never its value
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _major_minor(v: str | None) -> tuple[int, int]:
    if not v:
        return (0, 0)
    parts = v.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        return (0, 0)


def run_doctor() -> DoctorReport:
    """Collect versions and hardware, and flag combinations known not to work."""
    packages = {name: _version(name) for name in _PACKAGES}
    cuda, gpus = None, []
    problems: list[str] = []
    try:
        import torch

        cuda = torch.version.cuda if torch.cuda.is_available() else None
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception as e:  # noqa: BLE001 - report, don't crash the doctor
        problems.append(f"torch does not import ({e}); run `make install`")
    torch_v, tv_v = packages["torch"], packages["torchvision"]
    if torch_v and _major_minor(torch_v) < (2, 9):
        problems.append(f"torch {torch_v} is older than 2.9; llamactl needs torch >= 2.9")
    if torch_v and tv_v and _major_minor(tv_v)[1] != _major_minor(torch_v)[1] + 15:
        problems.append(f"torchvision {tv_v} does not match torch {torch_v} (Composer imports torchvision); "
                        f"install torchvision 0.{_major_minor(torch_v)[1] + 15}")
    if packages["mosaicml"] and packages["mosaicml"] != "0.32.1":
        problems.append(f"mosaicml {packages['mosaicml']} is untested; llamactl pins 0.32.1")
    if packages["mosaicml"] is None:
        problems.append("Composer (mosaicml) is not installed; run `make install`")
    if packages["mosaicml-streaming"] is None:
        problems.append("mosaicml-streaming is not installed; run `make install`")
    np_v = packages["numpy"]
    if np_v and _major_minor(np_v) >= (2, 0) and _major_minor(torch_v) < (2, 3):
        problems.append(f"numpy {np_v} needs torch >= 2.3")
    optional = {
        "flash_attn": importlib.util.find_spec("flash_attn") is not None,
        "liger_kernel": importlib.util.find_spec("liger_kernel") is not None,
        "torchao": importlib.util.find_spec("torchao") is not None,
        "wandb": importlib.util.find_spec("wandb") is not None,
        "mlflow": importlib.util.find_spec("mlflow") is not None,
        "tensorboard": importlib.util.find_spec("tensorboard") is not None,
    }
    token_var = next((v for v in TOKEN_ENV_VARS if os.environ.get(v)), None)
    return DoctorReport(python=platform.python_version(), packages=packages, cuda=cuda, gpus=gpus,
                        optional=optional, hf_token_set=token_var, problems=problems)
