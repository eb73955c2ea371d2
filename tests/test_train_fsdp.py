"""FSDP2 through `llamactl train --gpus 2` on CPU processes (gloo): it trains (also under the older
FSDP2 hook discovery of the GPU image's torch), sharded checkpoints are written one file per rank,
and a run started from a mid-way sharded checkpoint continues with exactly the losses of the
uninterrupted run. (The same code path runs on GPUs with NCCL; docs/performance.md.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

from test_train_cli import cli, losses, run_dirs

COMMON = ["--gpus", "2", "--duration", "8ba", "--save-interval", "4ba", "--no-sample", "eval_loader=null",
          "device_train_microbatch_size=4", "fsdp_config.state_dict_type=sharded", "save_num_checkpoints_to_keep=3"]


def test_fsdp2_sharded_checkpoint_resumes_with_the_same_losses(tmp_path):
    tiny = str(Path(__file__).resolve().parents[1] / "yamls" / "tiny.yaml")
    data = str(tmp_path / "ds")
    ref = tmp_path / "ref"
    ref.mkdir()
    # The reference run emulates FSDP2 of torch <= 2.13 (the GPU image has 2.11), which finds the
    # root's output tensors with tree_flatten only; this run segfaulted before LlamaOutput became a
    # pytree node (on the GPU: illegal memory access). The resumed run below uses this torch as is.
    shim = Path(__file__).resolve().parent / "fsdp_tree_flatten"
    repo = Path(__file__).resolve().parents[1]
    marker = tmp_path / "emulated"
    r = cli("train", "--yaml", tiny, *COMMON, "--data-root", data, "--runs-dir", str(ref / "runs"), cwd=ref,
            env={"PYTHONPATH": f"{shim}{os.pathsep}{repo}", "LLAMACTL_FSDP_EMULATION_MARKER": str(marker)})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert len(list(tmp_path.glob("emulated.*"))) >= 2, "the torch<=2.13 hook emulation did not load in the ranks"
    (run,) = run_dirs(ref)
    reference = losses(run)
    assert [s for s, _ in reference] == list(range(1, 9))
    mid = run / "checkpoints" / "ep0-ba4"
    assert sorted(p.name for p in mid.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"], \
        "a sharded checkpoint holds one file per rank"
    assert json.loads((run / "summary.json").read_text())["tokens"] == 8 * 8 * 256

    # sharding changes where the weights live, not what is computed: DDP on the same batches agrees
    ddp = tmp_path / "ddp"
    ddp.mkdir()
    plain = [a for a in COMMON if not a.startswith(("fsdp_config", "save_num"))]
    r = cli("train", "--yaml", tiny, *plain, "--data-root", data, "--runs-dir", str(ddp / "runs"), cwd=ddp)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (run_ddp,) = run_dirs(ddp)
    for (s1, a), (s2, b) in zip(reference, losses(run_ddp), strict=True):
        assert s1 == s2 and abs(a - b) <= 1e-4, (s1, a, b)

    # a new run that loads the step-4 sharded checkpoint (weights, optimizer, data position)
    again = tmp_path / "again"
    again.mkdir()
    r = cli("train", "--yaml", tiny, *COMMON, "--data-root", data, "--runs-dir", str(again / "runs"),
            f"load_path={mid}", cwd=again)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (run2,) = run_dirs(again)
    resumed = losses(run2)
    assert [s for s, _ in resumed] == [5, 6, 7, 8]
    assert resumed == reference[4:], "the run resumed from the sharded checkpoint has different losses"


def test_fsdp1_on_cpu_is_refused_with_the_fix(tmp_path):
    tiny = str(Path(__file__).resolve().parents[1] / "yamls" / "tiny.yaml")
    r = cli("train", "--yaml", tiny, "--duration", "2ba", "fsdp_config.version=1", "--runs-dir",
            str(tmp_path / "runs"), "--data-root", str(tmp_path / "ds"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "FSDP1" in r.stderr and "version 2" in r.stderr and "Traceback" not in r.stderr
