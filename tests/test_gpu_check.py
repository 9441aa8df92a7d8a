"""benchmarks/gpu_check.py: the GPU check rehearsed on the CPU (``--dry-run``: every part's code with
the tiny models), its failure handling (a part that crashes or runs out of time is recorded and the
others still run and record), and the pieces of its report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(SCRIPT.parent))

import gpu_check  # noqa: E402
from common import peak_for_name  # noqa: E402


def test_peak_tflops_by_device_name():
    assert peak_for_name("NVIDIA H100 80GB HBM3") == 989.0  # SXM
    assert peak_for_name("NVIDIA H100 PCIe") == 756.0
    assert peak_for_name("NVIDIA H200") == 989.0
    assert peak_for_name("NVIDIA A100-SXM4-80GB") == peak_for_name("NVIDIA A100 80GB PCIe") == 312.0
    assert (peak_for_name("NVIDIA L40S"), peak_for_name("NVIDIA L40"), peak_for_name("NVIDIA L4")) == (
        362.0,
        181.0,
        121.0,
    )
    assert peak_for_name("Tesla V100-SXM2-16GB") is None  # no bf16 tensor cores


def test_targets_pass_and_fail_from_measured_steps():
    def row(variant, expressions, seconds, flops=0.0):
        return {
            "variant": variant,
            "expressions_per_image": expressions,
            "step_seconds": seconds,
            "flops": flops,
        }

    rows = [
        row("naive", 1, 2.0),
        row("evf_cache", 1, 0.1, 45e12),
        row("naive", 3, 2.0),
        row("evf_cache", 3, 0.5, 90e12),
    ]
    found = {t["target"]: t for t in gpu_check.targets(rows, peak=1000.0)}
    speed_1, speed_3, mfu_1, mfu_3 = found.values()
    assert (speed_1["value"], speed_1["pass"]) == (pytest.approx(20.0), True)  # 10x needed
    assert (speed_3["value"], speed_3["pass"]) == (pytest.approx(4.0), False)  # 5x needed
    assert (mfu_1["value"], mfu_1["pass"]) == (pytest.approx(0.45), True)
    assert (mfu_3["value"], mfu_3["pass"]) == (pytest.approx(0.18), False)
    unmeasured = gpu_check.targets(rows[:2], peak=None)
    assert [t["pass"] for t in unmeasured] == [True, None, None, None]


def test_sdpa_kernel_families_from_operator_names():
    ops = ["aten::_scaled_dot_product_efficient_attention", "aten::_efficient_attention_backward",
           "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math",
           "aten::_scaled_dot_product_cudnn_attention"]  # fmt: skip
    assert gpu_check.sdpa_kinds(ops) == ["cudnn", "flash", "math", "memory_efficient"]
    assert gpu_check.sdpa_kinds(ops[:2]) == ["memory_efficient"]


def test_time_limit_names_a_part(capsys):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--time-limit", "training=10"])
    assert "--time-limit training=10: expected PART=SECONDS" in capsys.readouterr().err
    assert gpu_check.parse_args(["--time-limit", "fit=10.5"]).time_limit == {"fit": 10.5}


@pytest.mark.slow
def test_dry_run_rehearses_every_part(tmp_path):
    out, work = tmp_path / "gpu_check.json", tmp_path / "work"
    command = [sys.executable, str(SCRIPT), "--dry-run", f"--out={out}", f"--workdir={work}"]
    run = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=gpu_check.child_env())
    assert run.returncode == 0, run.stdout[-3000:]
    report = json.loads(out.read_text())
    parts = report["parts"]
    assert list(parts) == list(gpu_check.PARTS)
    assert {name: p["status"] for name, p in parts.items()} == dict.fromkeys(gpu_check.PARTS, "ok")
    results = {name: p["results"] for name, p in parts.items()}

    env = results["environment"]
    assert env["device"]["packages"]["jsonargparse"] and env["matmul_bf16_tflops"] > 0
    sdpa = env["sdpa"]
    assert sdpa["alone"]["math"] == "ok" and set(sdpa["alone"]) == {"flash_attention", "efficient_attention",
                                                                     "cudnn_attention", "math"}  # fmt: skip
    assert sdpa["default"] and set(sdpa["default"]) <= {"flash", "memory_efficient", "cudnn", "math"}

    train = results["train"]["rows"]
    assert sorted((r["expressions_per_image"], r["variant"]) for r in train) == sorted(
        (e, v) for e in (1, 3) for v in ("naive", "evf", "evf_cache")
    )
    assert all(r["flops"] > 0 and r["step_seconds"] > 0 and r["model"] == "tiny" for r in train)
    assert [t["value"] is not None for t in report["targets"]] == [True, True, False, False]  # no GPU peak

    compiled = results["compile"]
    assert compiled["backend"] == "eager" and [r["compiled"] for r in compiled["rows"]] == [False, True]

    fit = results["fit"]
    assert fit["ddp"]["status"] == "ok" and fit["ddp"]["resumed_run_wrote"] == ["step=4.ckpt"]
    reasons = ("deepspeed is not installed", "DeepSpeed trains on GPUs only")  # without, with deepspeed here
    assert fit["deepspeed_stage_2"]["status"] == "skipped" and fit["deepspeed_stage_2"]["reason"] in reasons

    from evf.cache import EmbeddingStore

    for backend in ("sam_tiny", "sam2_tiny"):
        assert results["cache"][backend]["images"] == 4 and results["cache"][backend]["images_per_second"] > 0
        assert len(EmbeddingStore(work / f"cache_{backend}")) == 4

    predict = results["predict"]["rows"]
    assert [(r["model"], r["prompts"]) for r in predict] == [
        (m, n) for m in ("tiny", "tiny_sam2") for n in (1, 8, 32)
    ]
    assert "| train | ok |" in run.stdout and "| tiny_sam2 | 32 |" in run.stdout


@pytest.mark.slow
def test_a_failing_part_does_not_lose_the_others(tmp_path, monkeypatch, capsys):
    """train crashes after recording a row; compile runs past its 1 s limit; environment is real."""
    out, snapshot = tmp_path / "gpu_check.json", tmp_path / "when_train_ran.json"
    real_command = gpu_check.part_command

    def command(name, result, args):
        if name != "train":
            return real_command(name, result, args)
        crash = (f"import json, shutil, sys; shutil.copy({str(out)!r}, {str(snapshot)!r}); "
                 f"open({str(result)!r}, 'w').write(json.dumps({{'rows': ['measured before the crash']}})); "
                 "sys.exit('injected failure')")  # fmt: skip
        return [sys.executable, "-c", crash]

    monkeypatch.setattr(gpu_check, "part_command", command)
    argv = ["--dry-run", "--parts", "compile", "train", "environment", "--time-limit", "compile=1"]
    code = gpu_check.main([*argv, f"--out={out}", f"--workdir={tmp_path / 'work'}"])
    assert code == 1
    parts = json.loads(out.read_text())["parts"]
    assert list(parts) == ["environment", "train", "compile"]  # the documented order
    assert (
        parts["environment"]["status"] == "ok"
        and parts["environment"]["results"]["sdpa"]["alone"]["math"] == "ok"
    )
    assert parts["train"]["status"] == "failed" and "injected failure" in parts["train"]["error"]
    assert parts["train"]["results"] == {"rows": ["measured before the crash"]}
    assert parts["compile"]["status"] == "timeout" and parts["compile"]["seconds"] < 30
    assert json.loads(snapshot.read_text())["parts"]["environment"]["status"] == "ok"  # written after part 1
    printed = capsys.readouterr().out
    assert "| train | failed |" in printed and "| compile | timeout |" in printed
    assert "targets: (not made: " in printed  # from rows no real part writes: the report goes on
