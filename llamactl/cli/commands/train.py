"""``llamactl train``."""

from __future__ import annotations

from pathlib import Path

import typer


def train(
    overrides: list[str] = typer.Argument(None, metavar="[KEY=VALUE]...",
                                          help="Config overrides, e.g. optimizer.lr=1e-4 max_duration=50ba."),
    yaml: Path = typer.Option(None, "--yaml", "-y", help="Train YAML (LLM Foundry shape). See yamls/."),
    run_dir: Path = typer.Option(None, "--run-dir", help="Continue this run from its latest checkpoint."),
    duration: str = typer.Option(None, "--duration", help="max_duration, e.g. 200ba, 1ep, 10000000tok."),
    eval_interval: str = typer.Option(None, "--eval-interval", help="eval_interval, e.g. 100ba."),
    save_interval: str = typer.Option(None, "--save-interval", help="save_interval, e.g. 500ba."),
    precision: str = typer.Option(None, "--precision", help="fp32, amp_bf16 or amp_fp16."),
    runs_dir: Path = typer.Option(None, "--runs-dir", help="Where run directories are created (default runs/)."),
    data_root: Path = typer.Option(None, "--data-root", help="Where relative dataset paths resolve (default datasets/)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON instead of a table."),
    no_sample: bool = typer.Option(False, "--no-sample", help="Skip the generated sample line at the end."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print parameters, memory per GPU and expected speed; "
                                                          "train nothing."),
    gpus: int = typer.Option(None, "--gpus", min=1, help="Launch one process per GPU with torchrun (FSDP from "
                                                         "fsdp_config)."),
) -> None:
    """Train a Llama (pretraining, full fine-tuning or LoRA) from a YAML config."""
    from llamactl.cli import render
    from llamactl.services.train import train as run_train

    flags = {"max_duration": duration, "eval_interval": eval_interval, "save_interval": save_interval,
             "precision": precision, "runs_dir": runs_dir, "data_root": data_root}
    extra = [f"{k}={v}" for k, v in flags.items() if v is not None]
    if dry_run:
        from llamactl.services.train import plan

        result = plan(yaml, overrides=[*(overrides or []), *extra], run_dir=run_dir, gpus=gpus)
        render.print_json(result.__dict__) if json_out else render.train_plan(result)
        return
    if gpus and gpus > 1:
        from llamactl.services.train import launch

        run = launch(yaml, overrides=[*(overrides or []), *extra], gpus=gpus, run_dir=run_dir,
                     extra_args=["--no-sample"] if no_sample else [])
        render.info(f"run directory: {run}")
        return
    import os

    rank0 = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 talks to the terminal
    with render.TrainProgress(quiet=json_out or not rank0) as progress:
        result = run_train(yaml, overrides=[*(overrides or []), *extra], run_dir=run_dir,
                           on_event=progress.on_event, sample=not no_sample)
    if rank0:
        render.print_json(result.to_dict()) if json_out else render.train_summary(result)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
