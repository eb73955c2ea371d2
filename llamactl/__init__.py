"""llamactl: from raw text to a trained, evaluated, exported Llama-family model.

The Python API mirrors the CLI; each function returns a result object and prints nothing::

    from llamactl import train
    result = train("yamls/tiny.yaml", overrides=["max_duration=20ba"])
    print(result.final_loss, result.run_dir)
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["train"]


def train(*args, **kwargs):
    """Train from a YAML path or a TrainConfig; see :func:`llamactl.services.train.train`."""
    from llamactl.services.train import train as _train

    return _train(*args, **kwargs)
