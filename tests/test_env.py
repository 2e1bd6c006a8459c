"""``lfvila env``: the machine report (lfvila_cli.environment)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lfvila_cli import environment
from lfvila_cli.main import app

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report():
    return environment.environment_report()


def test_every_section_is_probed_and_this_machine_passes_its_checks(report):
    assert list(report) == list(environment.PROBES)
    assert not [s for s, values in report.items() if "error" in values], report
    torch = pytest.importorskip("torch")
    assert report["torch"]["version"] == torch.__version__
    assert report["torch"]["CUDA available"] == torch.cuda.is_available()
    assert report["threads"]["torch intra-op threads"] == torch.get_num_threads()
    assert report["threads"]["os.cpu_count"] == os.cpu_count()
    assert report["packages"]["numpy"] == __import__("numpy").__version__
    # the round trips ran: decord read PyAV's file, the codecs gave frames back
    assert report["decoders"]["decord + PyAV"].startswith("reads an H.264 mp4")
    assert report["decoders"]["jpeg (imagecodecs)"].startswith("round trip")
    ort = report["onnxruntime"]
    assert isinstance(ort["CUDA provider runs a graph"], bool) and "CPUExecutionProvider" in ort["providers listed"]
    assert report["deepspeed"]["accelerator"] in ("cpu", "cuda")
    if not torch.cuda.is_available():
        assert report["cuda"]["bf16 supported"] is False and "DeepSpeed refuses fp16" in report["cuda"]["training precision"]


def test_cli_prints_every_section_and_json_parses():
    text = CliRunner().invoke(app, ["env"])
    assert text.exit_code == 0, text.output
    headings = [line for line in text.output.splitlines() if line and not line.startswith(" ")]
    assert headings == list(environment.PROBES)
    assert "  CUDA provider runs a graph: " in text.output and "  training precision: " in text.output
    as_json = CliRunner().invoke(app, ["env", "--json"])
    assert as_json.exit_code == 0
    data = json.loads(as_json.output)
    assert list(data) == list(environment.PROBES) and data["packages"]["onnx"] != ""


def test_a_probe_that_raises_is_a_line_not_a_crash(monkeypatch):
    def broken():
        raise RuntimeError("libcudart.so.13: cannot open shared object file\nsecond line")

    monkeypatch.setitem(environment.PROBES, "deepspeed", broken)
    monkeypatch.setattr("lfvila_cli.data.codecs.encode", lambda *a, **k: (_ for _ in ()).throw(ValueError("no jpeg")))
    result = CliRunner().invoke(app, ["env"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    at = lines.index("deepspeed")
    assert lines[at + 1] == "  error: RuntimeError: libcudart.so.13: cannot open shared object file"
    assert lines[at + 2] == "decoders"  # the next section still ran
    assert "  jpeg (imagecodecs): failed: ValueError: no jpeg" in lines
    assert any(line.startswith("  decord + PyAV: reads") for line in lines)  # one failed check leaves its neighbours
    assert "threads" in lines


def test_precision_follows_the_gpu_generation():
    assert environment.generation(9) == "Hopper or newer" and environment.generation(8) == "Ampere / Ada"
    assert environment.generation(7) == "Volta / Turing" and environment.generation(6) == "older than Volta"
    assert environment.training_precision(True, True).startswith("bf16")
    assert environment.training_precision(True, False).startswith("fp16") and "precision=fp16" in environment.training_precision(True, False)
    assert environment.training_precision(False, False).startswith("fp32 or bf16")


def test_deepspeed_probe_prints_nothing_in_a_fresh_process():
    """Importing DeepSpeed logs its accelerator detection to stdout; the probe swallows that and
    its op checks, and gives DeepSpeed's handlers their streams back afterwards."""
    code = (
        "import json, logging; from lfvila_cli.environment import probe_deepspeed; out = probe_deepspeed(); "
        "handlers = [h for h in logging.getLogger('DeepSpeed').handlers if hasattr(h, 'stream')]; "
        "import sys; assert all(h.stream in (sys.stdout, sys.stderr) for h in handlers), handlers; print(json.dumps(out))"
    )
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    out = json.loads(done.stdout)  # stdout holds the JSON alone: nothing else was printed
    assert out["version"] and isinstance(out["ops compatible (JIT-buildable)"], list)


def test_a_gpu_that_only_emulates_bf16_trains_in_fp16(monkeypatch):
    """A V100 (capability 7.0): torch.cuda.is_bf16_supported() says yes (emulation), but bf16 is not
    in its hardware, so the report says fp16; an A100 (8.0) gets bf16."""
    from types import SimpleNamespace

    import torch

    props = {"major": 7, "minor": 0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(
        name="Tesla V100-SXM2-32GB", total_memory=32 * 1024**3, multi_processor_count=80, **props))
    v100 = environment.probe_cuda()
    assert v100["devices"][1] == "cuda:1 Tesla V100-SXM2-32GB, capability 7.0 (Volta / Turing), 32.0 GiB, 80 SMs"
    assert v100["bf16 supported"] is False and v100["training precision"].startswith("fp16")
    assert v100["torch.cuda.is_bf16_supported() (emulation included)"] == "True"
    props.update(major=8, minor=0)
    assert environment.probe_cuda()["training precision"].startswith("bf16")
