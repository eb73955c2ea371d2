"""``llamactl doctor``."""

from __future__ import annotations

import typer


def doctor(json_out: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """Print versions, GPUs, optional kernels and known-bad combinations."""
    from dataclasses import asdict

    from llamactl.cli import render
    from llamactl.services.doctor import run_doctor

    report = run_doctor()
    if json_out:
        render.print_json(asdict(report))
    else:
        render.doctor(report)
    if not report.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
