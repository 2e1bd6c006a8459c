"""The ``prepare`` sources hdvila, activitynet and jsonl on hand-written fixtures (some broken)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import fsspec
import pytest

from lfvila_cli.config import from_dict
from lfvila_cli.data.corpus import Rejections, Sample, validation_error
from lfvila_cli.data.formats import activitynet, didemo, hdvila, jsonl, parse_time
from lfvila_cli.data.formats.hdvila import Clip, chain_runs, window_sizes
from lfvila_cli.errors import ConfigError, DataError

FIXTURES = Path(__file__).parent / "fixtures" / "formats"
HDVILA = FIXTURES / "hdvila"
ANET = FIXTURES / "activitynet"
DIDEMO = FIXTURES / "didemo"
JSONL = FIXTURES / "jsonl"
EXAMPLE = Path(__file__).parent.parent / "examples" / "custom_dataset" / "my_corpus.jsonl"


def read_all(module, cfg, out_dir: Path) -> tuple[list[Sample], Rejections]:
    rejections = Rejections()
    return list(module.read(cfg, out_dir, rejections)), rejections


def hdvila_cfg(**kwargs) -> hdvila.HdvilaConfig:
    defaults = dict(metadata=str(HDVILA / "hdvila_part*.jsonl"), text=str(HDVILA / "hdvila_text.jsonl"), video_root="s3://bucket/hdvila/")
    return hdvila.HdvilaConfig(**{**defaults, **kwargs})


def write_lines(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def contiguous_video(video_id: str, starts_ends: list[tuple[float, float]]) -> dict:
    clips = [{"clip_id": f"{video_id}.{k}.mp4", "span": [s, e], "text": f"clip {k}"} for k, (s, e) in enumerate(starts_ends, 1)]
    return {"video_id": video_id, "url": "", "clip": clips}


# --- time parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("00:01:02.500", 62.5),
        ("1:02:03", 3723.0),
        ("01:02.5", 62.5),
        ("0:00:10.5", 10.5),
        ("62.5", 62.5),
        (" 7 ", 7.0),
        (62, 62.0),
        (0.25, 0.25),
    ],
)
def test_parse_time_accepts_published_forms(text, seconds):
    assert parse_time(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["00:00:xx", "1:60:00", "00:75", "-1", "", "1::2", "1:2:3:4", "nan", "inf", ".5", "1,5", True, None, [1], -3.0])
def test_parse_time_rejects_garbage(text):
    with pytest.raises(ValueError):
        parse_time(text)


# --- hdvila: run building -------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, min_clips, max_clips, sizes, dropped",
    [
        (3, 4, 8, [], 3),
        (4, 4, 8, [4], 0),
        (8, 4, 8, [8], 0),
        (9, 4, 8, [5, 4], 0),
        (10, 4, 8, [5, 5], 0),
        (17, 4, 8, [6, 6, 5], 0),
        (6, 4, 5, [5], 1),  # no split into windows of 4..5 exists: the tail is dropped
        (11, 4, 5, [5, 5], 1),
        (9, 4, 5, [5, 4], 0),
        (30, 4, 0, [30], 0),  # max_clips=0: whole runs
    ],
)
def test_window_sizes(n, min_clips, max_clips, sizes, dropped):
    assert window_sizes(n, min_clips, max_clips) == (sizes, dropped)


@pytest.mark.parametrize("min_clips, max_clips", [(4, 8), (4, 5), (4, 4), (1, 3), (3, 0)])
def test_window_sizes_partition_every_run(min_clips, max_clips):
    for n in range(1, 60):
        sizes, dropped = window_sizes(n, min_clips, max_clips)
        assert sum(sizes) + dropped == n
        assert all(min_clips <= s <= (max_clips or n) for s in sizes)
        if sizes:
            assert dropped < min_clips
        if max_clips >= 2 * min_clips - 1 and n >= min_clips:
            # Balanced windows always exist here: nothing is lost and lengths differ by at most 1.
            assert dropped == 0 and max(sizes) - min(sizes) <= 1


def test_chain_runs_gap_and_overlap_tolerance():
    def clip(i, start, end):
        return Clip(f"c{i}", start, end, "t")

    clips = [clip(1, 0, 5), clip(2, 5.4, 10), clip(3, 9.8, 15), clip(4, 15.6, 20), clip(5, 18.5, 25)]
    ids = lambda runs: [[c.clip_id for c in run] for run in runs]  # noqa: E731
    # +0.4 gap and -0.2 overlap chain; +0.6 gap and -1.5 overlap break.
    assert ids(chain_runs(clips, 0.5)) == [["c1", "c2", "c3"], ["c4"], ["c5"]]
    assert ids(chain_runs(clips, 0.0)) == [["c1"], ["c2"], ["c3"], ["c4"], ["c5"]]
    assert ids(chain_runs(clips, 2.0)) == [["c1", "c2", "c3", "c4", "c5"]]
    # 1.1 - 0.6 is 0.5000000000000001 in floats: still within a 0.5 s tolerance.
    assert ids(chain_runs([clip(2, 1.1, 5), clip(1, 0, 0.6)], 0.5)) == [["c1", "c2"]]


# --- hdvila: the reader ---------------------------------------------------------------------


def test_hdvila_samples_and_rejections(tmp_path):
    samples, rejections = read_all(hdvila, hdvila_cfg(), tmp_path)
    assert [s.id for s in samples] == ["aaaaaaaaaaa-0", "bbbbbbbbbbb-0", "bbbbbbbbbbb-1", "ccccccccccc-0", "fffffffffff-0"]
    assert dict(rejections.counts) == {
        "duplicate text for clip": 1,
        "text record needs string 'clip_id' and 'text'": 1,
        "run shorter than 4 clips": 2,
        "missing field 'span'": 1,
        "bad timestamp": 1,
        "segment ends before it starts": 1,
        "missing text": 1,
        "empty text": 1,
        "span is not a [start, end] pair": 1,
        "duplicate clip_id": 1,
        "missing field 'clip'": 1,
        "record is not a JSON object": 1,
        "bad video_id": 1,
    }
    assert rejections.examples["bad timestamp"] == [f"{HDVILA / 'hdvila_part0.jsonl'}:5#ddddddddddd.2.mp4"]
    assert rejections.examples["run shorter than 4 clips"][0].endswith("hdvila_part0.jsonl:4#ccccccccccc.1.mp4..ccccccccccc.2.mp4")
    # Everything the reader yields passes the central validation.
    assert [validation_error(s) for s in samples] == [None] * len(samples)
    assert all(s.split == "train" and s.duration is None for s in samples)


def test_hdvila_orders_clips_parses_times_and_picks_text(tmp_path):
    samples, _ = read_all(hdvila, hdvila_cfg(), tmp_path)
    soup = samples[0]
    assert [(seg.start, seg.end) for seg in soup.segments] == [(0.0, 5.0), (5.0, 10.5), (10.5, 15.0), (15.2, 20.0), (19.8, 25.5)]
    assert [seg.text for seg in soup.segments] == [
        "today we are making soup",  # the ASR file wins over inline text
        "first chop the onions",  # the first of two ASR lines for one clip
        "then fry them in butter",
        "add the stock and simmer",
        "and that is the whole recipe",  # inline text fills the gap, stripped
    ]
    assert soup.video == "s3://bucket/hdvila/aaaaaaaaaaa"
    assert [seg.video for seg in soup.segments] == [f"s3://bucket/hdvila/aaaaaaaaaaa/aaaaaaaaaaa.{k}.mp4" for k in range(1, 6)]
    assert soup.task == {"url": "https://www.youtube.com/watch?v=aaaaaaaaaaa"}


def test_hdvila_splits_long_runs_into_consecutive_windows(tmp_path):
    samples, _ = read_all(hdvila, hdvila_cfg(), tmp_path)
    by_id = {s.id: s for s in samples}
    first, second = by_id["bbbbbbbbbbb-0"], by_id["bbbbbbbbbbb-1"]
    assert [seg.text for seg in first.segments] == ["b one", "b two", "b three", "b four", "b five"]
    assert [seg.text for seg in second.segments] == ["b six", "b seven", "b eight", "b nine", "b ten"]
    # The short run before the 3 s gap is dropped; the 4-clip run after it is kept.
    assert [seg.text for seg in by_id["ccccccccccc-0"].segments][0] == "c three after a three second gap"

    whole, _ = read_all(hdvila, hdvila_cfg(max_clips=0), tmp_path)
    assert len({s.id: s for s in whole}["bbbbbbbbbbb-0"].segments) == 10

    strict_windows, rejections = read_all(hdvila, hdvila_cfg(min_clips=4, max_clips=4), tmp_path)
    assert [len(s.segments) for s in strict_windows if s.id.startswith("bbb")] == [4, 4]
    assert rejections.counts["run remainder shorter than 4 clips"] == 2  # bbb (10 = 4+4+2), aaa (5 = 4+1)


def test_hdvila_gap_tolerance_decides_runs(tmp_path):
    spans = [(0, 5), (5, 10), (10.6, 15), (15, 20), (20, 25)]  # one 0.6 s gap
    meta = write_lines(tmp_path / "meta.jsonl", [contiguous_video("ggggggggggg", spans)])
    cfg = dict(metadata=str(meta), text="", video_root="/videos", min_clips=2)
    samples, rejections = read_all(hdvila, hdvila.HdvilaConfig(**cfg), tmp_path)
    assert [len(s.segments) for s in samples] == [2, 3]
    assert [s.id for s in samples] == ["ggggggggggg-0", "ggggggggggg-1"]
    samples, rejections = read_all(hdvila, hdvila.HdvilaConfig(**cfg, gap_tolerance=1.0), tmp_path)
    assert [len(s.segments) for s in samples] == [5]
    assert rejections.total == 0


def test_hdvila_source_layout_and_local_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    samples, _ = read_all(hdvila, hdvila_cfg(layout="source", video_root="videos"), tmp_path)
    soup = samples[0]
    assert soup.video == os.path.join(str(tmp_path), "videos") + "/aaaaaaaaaaa.mp4"
    assert all(seg.video is None for seg in soup.segments)
    assert soup.segments[3].start == 15.2  # still on the source timeline


def test_hdvila_reads_gzip_and_fsspec_urls(tmp_path):
    part = (HDVILA / "hdvila_part1.jsonl").read_bytes()
    (tmp_path / "part.jsonl.gz").write_bytes(gzip.compress(part))
    samples, _ = read_all(hdvila, hdvila.HdvilaConfig(metadata=str(tmp_path / "part.jsonl.gz"), video_root="/v"), tmp_path)
    assert [s.id for s in samples] == ["fffffffffff-0"]

    fs = fsspec.filesystem("memory")
    for name in ("hdvila_part0.jsonl", "hdvila_part1.jsonl", "hdvila_text.jsonl"):
        fs.pipe(f"/lfvila-test/{name}", (HDVILA / name).read_bytes())
    try:
        cfg = hdvila.HdvilaConfig(metadata="memory://lfvila-test/hdvila_part*.jsonl", text="memory://lfvila-test/hdvila_text.jsonl", video_root="/v")
        assert hdvila.raw_inputs(cfg) == [
            "memory:///lfvila-test/hdvila_part0.jsonl",
            "memory:///lfvila-test/hdvila_part1.jsonl",
            "memory://lfvila-test/hdvila_text.jsonl",
        ]
        samples, _ = read_all(hdvila, cfg, tmp_path)
        assert len(samples) == 5
    finally:
        fs.rm("/lfvila-test", recursive=True)


def test_hdvila_raw_inputs_lists_metadata_then_text():
    assert hdvila.raw_inputs(hdvila_cfg()) == [
        str(HDVILA / "hdvila_part0.jsonl"),
        str(HDVILA / "hdvila_part1.jsonl"),
        str(HDVILA / "hdvila_text.jsonl"),
    ]


def test_hdvila_broken_json_names_file_and_line(tmp_path):
    with pytest.raises(DataError) as info:
        read_all(hdvila, hdvila_cfg(metadata=str(HDVILA / "broken.jsonl")), tmp_path)
    message = str(info.value)
    assert "broken.jsonl:2:" in message and "invalid JSON" in message
    assert "\n" not in message


def test_hdvila_unreadable_and_unmatched_paths(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: cannot read"):
        read_all(hdvila, hdvila_cfg(metadata=str(tmp_path / "nope.jsonl")), tmp_path)
    with pytest.raises(DataError, match=r"no files match \(config key 'hdvila.metadata'\)"):
        read_all(hdvila, hdvila_cfg(metadata=str(tmp_path / "part*.jsonl")), tmp_path)
    with pytest.raises(DataError, match="cannot read"):
        read_all(hdvila, hdvila_cfg(text=str(tmp_path)), tmp_path)  # a directory


def test_hdvila_config_errors_name_the_key(tmp_path):
    hdvila.HdvilaConfig()  # empty paths are fine until the source is used
    with pytest.raises(ConfigError, match="config key 'hdvila.metadata' is required for --source hdvila"):
        read_all(hdvila, hdvila.HdvilaConfig(), tmp_path)
    with pytest.raises(ConfigError, match="'hdvila.metadata' is required"):
        hdvila.raw_inputs(hdvila.HdvilaConfig())
    with pytest.raises(ConfigError, match="'hdvila.video_root' is required"):
        read_all(hdvila, hdvila_cfg(video_root=""), tmp_path)
    with pytest.raises(ConfigError, match="hdvila.min_clips"):
        hdvila.HdvilaConfig(min_clips=0)
    with pytest.raises(ConfigError, match="hdvila.max_clips"):
        hdvila.HdvilaConfig(min_clips=4, max_clips=3)
    with pytest.raises(ConfigError, match="hdvila.gap_tolerance"):
        hdvila.HdvilaConfig(gap_tolerance=-1.0)
    with pytest.raises(ConfigError, match="hdvila.split"):
        hdvila.HdvilaConfig(split="validation")
    with pytest.raises(ConfigError, match="layout"):
        from_dict(hdvila.HdvilaConfig, {"layout": "flat"}, prefix="hdvila.")
    cfg = from_dict(hdvila.HdvilaConfig, {"metadata": "m.jsonl", "max_clips": 0, "gap_tolerance": 1})
    assert (cfg.max_clips, cfg.gap_tolerance) == (0, 1.0)


# --- activitynet ----------------------------------------------------------------------------


def anet_cfg(**kwargs) -> activitynet.ActivityNetConfig:
    return activitynet.ActivityNetConfig(**{"annotations": str(ANET), "video_root": "s3://bucket/anet", **kwargs})


def test_activitynet_samples_splits_and_rejections(tmp_path):
    samples, rejections = read_all(activitynet, anet_cfg(), tmp_path)
    assert [(s.id, s.split) for s in samples] == [
        ("train-v_train0001", "train"),  # ids are <file stem>-<key>: val_1 and val_2 share videos
        ("train-v_train0002", "train"),
        ("train-v_train0004", "train"),
        ("train-v_train0007", "train"),
        ("train-v_train0008", "train"),
        ("val_1-v_shared0001", "val"),
        ("val_1-v_val0001", "val"),
        ("val_2-v_shared0001", "test"),
    ]
    assert dict(rejections.counts) == {
        "timestamps and sentences differ in length": 1,
        "missing field 'sentences'": 1,
        "bad timestamp": 1,
    }
    assert rejections.examples["missing field 'sentences'"] == [f"{ANET / 'train.json'}#v_train0005"]
    assert samples[0].video == "s3://bucket/anet/v_train0001.mp4"
    assert samples[-1].video == "s3://bucket/anet/v_shared0001.mp4"


def test_activitynet_paragraph_text_and_times(tmp_path):
    by_id = {s.id: s for s in read_all(activitynet, anet_cfg(), tmp_path)[0]}
    first = by_id["train-v_train0001"]
    assert first.paragraph == "A man is standing in a kitchen. He chops onions on a board. He fries them in a pan."
    assert [(seg.start, seg.end) for seg in first.segments] == [(0.0, 19.86), (17.37, 60.81), (56.26, 79.42)]  # overlaps kept
    assert all(type(seg.start) is float and type(seg.end) is float for seg in first.segments)
    second = by_id["train-v_train0002"]
    assert [seg.text for seg in second.segments] == ["First in time.", "Second in time, ending at the duration."]
    assert second.duration == 30.0 and second.segments[-1].end == 30.0
    assert validation_error(second) is None  # end == duration is valid
    eight = by_id["train-v_train0008"]  # equal starts keep the file's order (a ends after b)
    assert [(seg.text, seg.start, seg.end) for seg in eight.segments] == [("a", 0.0, 6.0), ("b", 0.0, 4.0), ("c", 5.0, 9.0)]


def test_activitynet_invalid_samples_are_caught_by_central_validation(tmp_path):
    by_id = {s.id: s for s in read_all(activitynet, anet_cfg(), tmp_path)[0]}
    assert validation_error(by_id["train-v_train0004"]) == "segment ends before it starts"
    assert validation_error(by_id["train-v_train0007"]) == "empty text"
    assert [(g.start, g.end) for g in by_id["val_1-v_val0001"].segments] == [(0.0, 10.0), (10.0, 20.0)]  # end clamped
    valid = [sid for sid, s in by_id.items() if validation_error(s) is None]
    assert len(valid) == 6


def test_activitynet_split_mapping_and_present_files(tmp_path):
    cfg = anet_cfg(splits={"train": "train", "val_1": "test"})
    assert activitynet.raw_inputs(cfg) == [str(ANET / "train.json"), str(ANET / "val_1.json")]
    samples, _ = read_all(activitynet, cfg, tmp_path)
    assert {s.id: s.split for s in samples if s.split == "test"} == {"val_1-v_shared0001": "test", "val_1-v_val0001": "test"}

    partial = tmp_path / "captions"
    partial.mkdir()
    shutil.copy(ANET / "val_1.json", partial)
    cfg = anet_cfg(annotations=str(partial))
    assert activitynet.raw_inputs(cfg) == [str(partial / "val_1.json")]
    assert {s.split for s in read_all(activitynet, cfg, tmp_path)[0]} == {"val"}

    with pytest.raises(DataError, match="none of train.json, val_1.json, val_2.json found"):
        activitynet.raw_inputs(anet_cfg(annotations=str(tmp_path / "empty")))


def test_activitynet_malformed_files(tmp_path):
    with pytest.raises(DataError) as info:
        read_all(activitynet, anet_cfg(annotations=str(FIXTURES / "activitynet_broken")), tmp_path)
    assert "train.json:3: invalid JSON" in str(info.value)
    with pytest.raises(DataError, match="train.json: expected a JSON object keyed by video id, got a list"):
        read_all(activitynet, anet_cfg(annotations=str(FIXTURES / "activitynet_list")), tmp_path)


def test_activitynet_config_errors(tmp_path):
    activitynet.ActivityNetConfig()
    with pytest.raises(ConfigError, match="config key 'activitynet.annotations' is required for --source activitynet"):
        read_all(activitynet, activitynet.ActivityNetConfig(), tmp_path)
    with pytest.raises(ConfigError, match="'activitynet.video_root' is required"):
        read_all(activitynet, anet_cfg(video_root=""), tmp_path)
    with pytest.raises(ConfigError, match="activitynet.splits.val_1"):
        anet_cfg(splits={"val_1": "validation"})
    with pytest.raises(ConfigError, match="activitynet.video_ext"):
        anet_cfg(video_ext="mp4")


# --- jsonl ----------------------------------------------------------------------------------


def test_jsonl_samples_paths_and_rejections(tmp_path):
    samples, rejections = read_all(jsonl, jsonl.JsonlConfig(path=str(JSONL / "corpus.jsonl")), tmp_path)
    assert [s.id for s in samples] == ["relative", "absolute", "url", "backwards"]
    relative, absolute, url, backwards = samples
    assert relative.video == str(JSONL / "videos" / "relative.mp4")
    assert relative.split == "val" and relative.duration == 30.0
    assert absolute.video == "/data/absolute" and absolute.split == "train"
    assert [seg.video for seg in absolute.segments] == [str(JSONL / "clips" / "absolute.1.mp4"), "/data/absolute/absolute.2.mp4"]
    assert url.video == "s3://bucket/videos/url.mp4" and url.task == {"group": "kept verbatim"}
    assert dict(rejections.counts) == {
        "missing field 'segments'": 1,
        "'segment.start' is not a number": 1,
        "segment missing field 'text'": 1,
        "record is not a JSON object": 1,
    }
    assert rejections.examples["missing field 'segments'"] == [f"{JSONL / 'corpus.jsonl'}:5"]
    assert validation_error(backwards) == "segment ends before it starts"
    assert [validation_error(s) for s in samples[:3]] == [None] * 3


def test_jsonl_video_root_and_url_base(tmp_path):
    cfg = jsonl.JsonlConfig(path=str(JSONL / "corpus.jsonl"), video_root="s3://bucket/mine/")
    samples, _ = read_all(jsonl, cfg, tmp_path)
    assert samples[0].video == "s3://bucket/mine/videos/relative.mp4"

    fs = fsspec.filesystem("memory")
    fs.pipe("/lfvila-jsonl/corpus.jsonl", (JSONL / "corpus.jsonl").read_bytes())
    try:
        samples, _ = read_all(jsonl, jsonl.JsonlConfig(path="memory://lfvila-jsonl/corpus.jsonl"), tmp_path)
        assert samples[0].video == "memory://lfvila-jsonl/videos/relative.mp4"
    finally:
        fs.rm("/lfvila-jsonl", recursive=True)


def test_jsonl_broken_json_names_file_and_line(tmp_path):
    with pytest.raises(DataError) as info:
        read_all(jsonl, jsonl.JsonlConfig(path=str(JSONL / "broken.jsonl")), tmp_path)
    assert f"{JSONL / 'broken.jsonl'}:2: invalid JSON" in str(info.value)
    with pytest.raises(DataError, match="missing.jsonl: cannot read"):
        read_all(jsonl, jsonl.JsonlConfig(path=str(tmp_path / "missing.jsonl")), tmp_path)


def test_jsonl_config(tmp_path):
    cfg = jsonl.JsonlConfig(path=str(JSONL / "corpus.jsonl"))
    assert jsonl.raw_inputs(cfg) == [str(JSONL / "corpus.jsonl")]
    with pytest.raises(ConfigError, match="config key 'jsonl.path' is required for --source jsonl"):
        jsonl.raw_inputs(jsonl.JsonlConfig())


def test_custom_dataset_example_is_a_valid_corpus(tmp_path):
    samples, rejections = read_all(jsonl, jsonl.JsonlConfig(path=str(EXAMPLE), video_root="/data/my_videos"), tmp_path)
    assert rejections.total == 0
    assert [validation_error(s) for s in samples] == [None, None, None]
    assert all(len(s.segments) >= 4 for s in samples)  # enough for pre-training's 4-clip draws
    assert samples[0].video == "/data/my_videos/pasta-01.mp4"


# --- through the prepare stage --------------------------------------------------------------


def test_prepare_counts_reader_and_central_rejections(tmp_path):
    from lfvila_cli.data.prepare import PrepareConfig, prepare

    cfg = PrepareConfig(source="activitynet", activitynet=anet_cfg())
    summary = prepare(cfg, tmp_path)
    assert summary["samples"] == 6 and summary["splits"] == {"train": 3, "val": 2, "test": 1}
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["rejected"]["by_reason"] == {
        "timestamps and sentences differ in length": 1,
        "missing field 'sentences'": 1,
        "bad timestamp": 1,
        "segment ends before it starts": 1,
        "empty text": 1,
    }


# --- didemo ---------------------------------------------------------------------------------


def didemo_cfg(**kwargs) -> didemo.DidemoConfig:
    return didemo.DidemoConfig(**{"annotations": str(DIDEMO), "video_root": "s3://bucket/didemo", **kwargs})


def test_didemo_paragraphs_consensus_times_and_rejections(tmp_path):
    samples, rejections = read_all(didemo, didemo_cfg(), tmp_path)
    assert [(s.id, s.split) for s in samples] == [
        ("10015567@N08_3655084291", "train"),
        ("12090392@N02_13482799053_87ef417396", "train"),
        ("54321@N00_2222222222", "val"),
    ]
    pool, dog, street = samples
    # Moments ordered by time; each takes its annotators' most frequent pair (ties: the first
    # listed), chunks of 5 s with the end chunk inclusive; text stripped.
    assert [(g.start, g.end, g.text) for g in pool.segments] == [
        (0.0, 5.0, "a child stands at the edge"),
        (10.0, 15.0, "the man in the red shirt jumps into the pool"),
        (20.0, 30.0, "everyone swims to the side"),  # [4,5] x2 vs [5,5] x2: the first listed
    ]
    assert [(g.start, g.end) for g in dog.segments] == [(0.0, 10.0), (15.0, 25.0)]
    assert [g.text for g in street.segments] == ["a car drives past", "the street is empty"]  # equal times: file order
    assert pool.video == "s3://bucket/didemo/10015567@N08_3655084291.mov" and pool.duration is None
    assert all(validation_error(s) is None for s in samples)
    assert dict(rejections.counts) == {
        "no valid times pair": 1,
        "missing field 'times'": 1,
        "record is not a JSON object": 1,
        "bad video name": 1,
        "description is not a string": 1,
    }
    assert rejections.examples["missing field 'times'"] == [f"{DIDEMO / 'train_data.json'}#6"]


def test_didemo_video_ext_and_split_mapping(tmp_path):
    samples, _ = read_all(didemo, didemo_cfg(video_ext=".mp4", splits={"val_data": "test"}), tmp_path)
    assert [(s.id, s.split, s.video) for s in samples] == [("54321@N00_2222222222", "test", "s3://bucket/didemo/54321@N00_2222222222.mp4")]
    assert didemo.consensus([[9, 9], [1, 2], [0, 0], [1, 2]]) == (5.0, 15.0)  # invalid pairs do not vote


def test_didemo_malformed_files_and_config(tmp_path):
    (tmp_path / "train_data.json").write_text('{"video": "a.mp4"}')
    with pytest.raises(DataError, match="expected a JSON list of moments"):
        read_all(didemo, didemo_cfg(annotations=str(tmp_path)), tmp_path)
    with pytest.raises(DataError, match="none of train_data.json"):
        read_all(didemo, didemo_cfg(annotations=str(tmp_path / "missing")), tmp_path)
    with pytest.raises(ConfigError, match="didemo.video_root"):
        read_all(didemo, didemo_cfg(video_root=""), tmp_path)
    with pytest.raises(ConfigError, match="didemo.video_ext"):
        didemo.DidemoConfig(video_ext="mp4")
    with pytest.raises(ConfigError, match="didemo.splits.val_data"):
        didemo.DidemoConfig(splits={"val_data": "validation"})
