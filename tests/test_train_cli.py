"""`llamactl train` end to end on the embedded tiny default: subprocess CLI, run directory,
SIGKILL + resume determinism, LoRA through the seed-shaped YAML, secrets, doctor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "yamls" / "tiny.yaml"
FAKE_TOKEN = "hf_SECRETxyz1234567890abcdefTOKEN"


def cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "llamactl", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def run_dirs(root: Path) -> list[Path]:
    return sorted(p for p in (root / "runs").iterdir() if p.is_dir())


def losses(run_dir: Path) -> list[tuple[int, float]]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            out.append((rec["step"], rec["loss"]))
    return out


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("datasets")


def test_train_tiny_subprocess_writes_a_complete_run_dir(tmp_path, data_root):
    r = cli("train", "--yaml", str(TINY), "--duration", "30ba", "--eval-interval", "15ba", "--save-interval", "15ba",
            "--data-root", str(data_root), "--runs-dir", str(tmp_path / "runs"), "log_interval=1ba",
            cwd=tmp_path, env={"HF_TOKEN": FAKE_TOKEN})
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    assert run.name.startswith("tiny-")
    for name in ("config.yaml", "metrics.jsonl", "train.log", "loss.png", "summary.json"):
        assert (run / name).is_file(), f"{name} missing from the run directory"
    assert sorted(p.name for p in (run / "checkpoints").glob("ep*-ba*-rank0.pt")), "no checkpoint"
    steps = losses(run)
    assert [s for s, _ in steps] == list(range(1, 31))
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    step_rec = next(r for r in recs if "loss" in r)
    assert {"step", "tokens", "loss", "lr", "tokens_per_s"} <= set(step_rec)
    assert any("eval" in r for r in recs), "eval results are recorded"
    first = sum(l for _, l in steps[:5]) / 5
    last = sum(l for _, l in steps[-5:]) / 5
    assert last < first - 0.5, f"loss did not fall clearly: {first:.3f} -> {last:.3f}"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["sample"], summary
    assert "sample" in r.stdout and summary["sample"].strip()[:10] in r.stdout
    # the token is never written anywhere in the run directory nor shown
    for f in run.rglob("*"):
        if f.is_file():
            assert FAKE_TOKEN.encode() not in f.read_bytes(), f"token leaked into {f}"
    assert FAKE_TOKEN not in r.stdout + r.stderr


def test_sigkill_then_resume_gives_the_same_losses(tmp_path, data_root):
    common = ["--yaml", str(TINY), "--duration", "24ba", "--save-interval", "6ba", "--data-root", str(data_root),
              "eval_interval=1000ba", "eval_loader=null", "--no-sample"]
    ref_root = tmp_path / "ref"
    ref_root.mkdir()
    r = cli("train", *common, "--runs-dir", str(ref_root / "runs"), cwd=ref_root)
    assert r.returncode == 0, r.stderr[-3000:]
    reference = losses(run_dirs(ref_root)[0])
    assert len(reference) == 24

    work = tmp_path / "killed"
    work.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "llamactl", "train", *common, "--runs-dir", str(work / "runs")],
                            cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        runs = list((work / "runs").glob("*/metrics.jsonl")) if (work / "runs").exists() else []
        if runs and len(runs[0].read_text().splitlines()) >= 15:
            proc.send_signal(signal.SIGKILL)
            killed_at = len(runs[0].read_text().splitlines())
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert killed_at is not None and killed_at < 24, "the run finished before it could be killed"
    (run,) = run_dirs(work)
    r = cli("train", "--run-dir", str(run), "--no-sample", cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resum" in r.stdout.lower()
    resumed = losses(run)
    assert [s for s, _ in resumed] == list(range(1, 25))
    assert resumed == reference, "resumed loss sequence differs from the uninterrupted run"


def test_bad_input_is_one_red_line_without_traceback(tmp_path):
    r = cli("train", "--yaml", str(tmp_path / "missing.yaml"), cwd=tmp_path)
    assert r.returncode == 2
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = cli("train", "--yaml", str(TINY), "optimizer.lrr=1", cwd=tmp_path)
    assert r.returncode == 2 and "did you mean 'optimizer.lr'" in r.stderr and "Traceback" not in r.stderr
    r = cli("train", "--yaml", str(TINY), "--precision", "amp_bf16", "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    if "needs a GPU" in r.stderr:
        assert r.returncode == 2 and "Traceback" not in r.stderr
    r = cli("--debug", "train", "--yaml", str(tmp_path / "missing.yaml"), cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_doctor_reports_versions_and_never_the_token(tmp_path):
    r = cli("doctor", "--json", cwd=tmp_path, env={"HF_TOKEN": FAKE_TOKEN})
    report = json.loads(r.stdout)
    assert report["packages"]["torch"] and report["packages"]["mosaicml"] == "0.32.1"
    assert report["hf_token_set"] == "HF_TOKEN"
    assert FAKE_TOKEN not in r.stdout + r.stderr
    r = cli("doctor", cwd=tmp_path, env={"HF_TOKEN": FAKE_TOKEN})
    assert "transformers" in r.stdout and "set (via HF_TOKEN)" in r.stdout and FAKE_TOKEN not in r.stdout


def test_help_is_fast_and_imports_no_torch():
    code = "import sys, time; t=time.perf_counter(); import llamactl.cli.app; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ,
                         "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "False", "the CLI imports torch at start-up: --help and completion get slow"


def test_lora_through_the_seed_shaped_yaml_saves_only_adapters(tmp_path, data_root):
    """yamls/llama3-1b-lora.yaml unchanged but for the model (a tiny local stand-in), data and CPU knobs."""
    import shutil

    import torch

    from llamactl.data.embedded import embedded_tokenizer_dir
    from llamactl.interop.checkpoint import save_hf_folder
    from llamactl.model import Llama
    from llamactl.model.presets import preset

    base = tmp_path / "tiny-base"
    model = Llama(preset("tiny"))
    model.init_weights(seed=5)
    save_hf_folder(model, base)
    for f in embedded_tokenizer_dir().iterdir():
        shutil.copy(f, base / f.name)
    r = cli("train", "--yaml", str(REPO / "yamls" / "llama3-1b-lora.yaml"), f"variables.model_name={base}",
            "variables.max_seq_len=128", "train_loader.name=embedded", "eval_loader.name=embedded",
            "train_loader.dataset.split=train", "eval_loader.dataset.split=val",
            "global_train_batch_size=4", "device_train_microbatch_size=4", "device_eval_batch_size=4",
            "eval_subset_num_batches=2", "--precision", "fp32", "--duration", "6ba", "--save-interval", "3ba",
            "--eval-interval", "3ba", "--data-root", str(data_root), "--runs-dir", str(tmp_path / "runs"),
            "--no-sample", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    ckpt = torch.load(run / "checkpoints" / "ep0-ba6-rank0.pt", map_location="cpu", weights_only=False)
    weights = ckpt["state"]["model"]
    assert weights and all("lora_" in k for k in weights), "the checkpoint must hold only adapter weights"
    targets = {k.split(".")[-4] for k in weights}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items()), "adapters did not train"
    assert len(losses(run)) == 6


def test_cuda_oom_becomes_one_explanation_with_the_knobs(tmp_path, data_root, monkeypatch):
    """A CUDA OOM cannot happen on this CPU machine, so Trainer.fit raises the real exception type."""
    import torch
    from composer import Trainer

    from llamactl.errors import RunError
    from llamactl.services.train import train

    def oom(self, *a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "fit", oom)
    with pytest.raises(RunError) as e:
        train(TINY, overrides=[f"runs_dir={tmp_path / 'runs'}", f"data_root={data_root}", "max_duration=2ba"],
              sample=False)
    msg = str(e.value)
    for knob in ("device_train_microbatch_size", "activation_checkpointing", "peft_config", "precision",
                 "max_seq_len", "no checkpoint was saved yet", "--run-dir"):
        assert knob in msg, knob
    assert "\n" not in msg


def test_shell_completion_completes_commands(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "_LLAMACTL_COMPLETE": "complete_bash",
           "COMP_WORDS": "llamactl tr", "COMP_CWORD": "1"}
    out = subprocess.run([sys.executable, "-c", "from llamactl.cli import main; main()"], env=env,
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.split() == ["train"]


def test_dry_run_sizes_the_1b_config_without_training(tmp_path):
    r = cli("train", "--yaml", str(REPO / "yamls" / "llama3-1b-c4.yaml"), "--dry-run", "--json",
            "device_train_microbatch_size=4", "global_train_batch_size=4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["params_total"] == 1_235_814_400
    assert 35 < plan["memory_gib"]["total"] < 50
    assert not (tmp_path / "runs").exists()


def test_gpus_flag_launches_processes_on_one_run_dir(tmp_path, data_root):
    """--gpus N starts N torchrun processes on one run directory (on this CPU machine: gloo DDP)."""
    # its own data folder: no other test's (killed) run has touched its shared memory
    r = cli("train", "--yaml", str(TINY), "--gpus", "2", "--duration", "4ba", "--data-root", str(tmp_path / "ds"),
            "--runs-dir", str(tmp_path / "runs"), "--no-sample", "eval_loader=null",
            "device_train_microbatch_size=4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    assert [s for s, _ in losses(run)] == [1, 2, 3, 4]
    assert json.loads((run / "summary.json").read_text())["tokens"] == 4 * 8 * 256
    assert r.stdout.count("checkpoint") == 1, "only rank 0 prints the summary"
    r = cli("train", "--yaml", str(TINY), "--gpus", "2", cwd=tmp_path)
    assert r.returncode == 2 and "per-GPU batch" in r.stderr


def test_usage_errors_are_one_line_and_bare_command_shows_help(tmp_path):
    for args, needle in ((["trian"], "Did you mean 'train'"), (["train", "--bogus"], "No such option: --bogus"),
                         (["train", "--yaml"], "requires an argument")):
        r = cli(*args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stderr)
        assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = cli(cwd=tmp_path)
    assert r.returncode == 0 and "prepare-data" in r.stdout and not r.stderr.strip()


def test_dry_run_speed_follows_the_measured_micro_batch_points():
    from llamactl.training.plan import MEASURED_MFU, expected_mfu

    points = MEASURED_MFU[("custom", True)]
    assert expected_mfu("custom", True, 4) == points[4] and expected_mfu("custom", True, 8) == points[8]
    assert points[4] < expected_mfu("custom", True, 6) < points[8]
    assert expected_mfu("custom", True, 1) == points[4] and expected_mfu("custom", True, 32) == points[8]
    assert expected_mfu("hf", False, 8) == MEASURED_MFU[("hf", False)][4]


def test_summary_speed_leaves_out_the_warm_up_but_not_later_pauses() -> None:
    """The summary's tokens/s is the second half's rate: a slow first step (compilation) does not
    drag it down, a checkpoint pause inside the second half does; MFU scales with it."""
    from llamactl.services.train import steady_throughput

    def history(times: list[float]) -> list[dict]:
        return [{"step": i + 1, "tokens": 100 * (i + 1), "elapsed_s": t, "tokens_per_s": 1.0, "mfu": 0.5}
                for i, t in enumerate(times)]

    warm = history([10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0])  # 10 s to compile, then 1 s a step
    tps, mfu = steady_throughput(warm)
    assert tps == pytest.approx(100.0) and mfu == pytest.approx(50.0)
    paused = history([1.0, 2.0, 3.0, 4.0, 5.0, 16.0, 17.0, 18.0])  # a 10 s save after step 5
    assert steady_throughput(paused)[0] == pytest.approx(400 / 14)
    assert steady_throughput(history([1.0])) == (1.0, 0.5)  # too short: the rolling rate
    # resumed after step 4: the new process's clock restarts; only its steps 5-12 count
    resumed = history([50.0, 51.0, 52.0, 53.0, 20.0, 22.0, 24.0, 26.0, 28.0, 30.0, 32.0, 34.0])
    assert steady_throughput(resumed)[0] == pytest.approx(50.0)
    assert steady_throughput([]) == (None, None)


def test_dry_run_on_several_gpus_uses_the_measured_fsdp2_scaling():
    """--gpus N with FSDP2 expects N x one GPU x the measured scaling; FSDP1 and one GPU: no loss."""
    from llamactl.config.load import build, load_yaml_dict
    from llamactl.config.schema import TrainConfig
    from llamactl.training.plan import FSDP2_SCALING, plan_run

    def plan(gpus: int, *overrides: str):
        data = load_yaml_dict(REPO / "yamls" / "llama3-1b-c4.yaml",
                              ["model.compile=true", "device_train_microbatch_size=8", *overrides])
        return plan_run(build(TrainConfig, data, ""), gpus=gpus, device_name="NVIDIA H200")

    one = plan(1)
    two = plan(2, "fsdp_config.state_dict_type=sharded")
    assert two.expected_tokens_per_s == pytest.approx(2 * FSDP2_SCALING[8] * one.expected_tokens_per_s)
    assert two.expected_mfu == pytest.approx(FSDP2_SCALING[8] * one.expected_mfu)
    assert any("FSDP2 on 2 GPUs" in n for n in two.notes)
    assert two.memory_gib["optimizer"] == pytest.approx(one.memory_gib["optimizer"] / 2, abs=0.01)
    fsdp1 = plan(2, "fsdp_config.version=1")
    assert fsdp1.expected_tokens_per_s == pytest.approx(2 * one.expected_tokens_per_s)
