"""The ``prepare`` sources queryd, cmd and violin on hand-written fixtures in the published formats."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from lfvila_cli.config import from_dict
from lfvila_cli.data.corpus import Rejections, Sample, validation_error
from lfvila_cli.data.formats import cmd, queryd, violin
from lfvila_cli.errors import ConfigError, DataError

FIXTURES = Path(__file__).parent / "fixtures" / "formats"
QUERYD = FIXTURES / "queryd"
CMD = FIXTURES / "cmd"
VIOLIN = FIXTURES / "violin"
VALUE = FIXTURES / "violin_value"


def read_all(module, cfg, out_dir: Path) -> tuple[list[Sample], Rejections]:
    rejections = Rejections()
    return list(module.read(cfg, out_dir, rejections)), rejections


def segments(sample: Sample) -> list[tuple]:
    return [(seg.start, seg.end, seg.text) for seg in sample.segments]


# --- queryd ---------------------------------------------------------------------------------


def queryd_cfg(**kwargs) -> queryd.QuerydConfig:
    return queryd.QuerydConfig(**{"annotations": str(QUERYD), "video_root": "s3://bucket/queryd", **kwargs})


def queryd_copy(tmp_path: Path) -> Path:
    """The fixture's split lists in a fresh directory (captions and times are written by the test)."""
    root = tmp_path / "queryd"
    root.mkdir()
    for name in ("train_list.txt", "val_list.txt", "test_list.txt"):
        shutil.copy(QUERYD / name, root)
    return root


QUERYD_REJECTIONS = {
    "bad video id": 1,
    "no captions": 1,
    "video listed twice": 2,  # once as a bare id
    "captions are not a list": 1,
    "bad description": 1,
    "empty description": 2,
    "no descriptions": 1,
}


def test_queryd_samples_splits_and_rejections(tmp_path):
    samples, rejections = read_all(queryd, queryd_cfg(), tmp_path)
    assert [(s.id, s.split) for s in samples] == [
        ("aaaaaaaaaaa", "train"),
        ("bbbbbbbbbbb", "train"),
        ("ccccccccccc", "train"),
        ("ggggggggggg", "train"),
        ("ddddddddddd", "val"),
        ("iiiiiiiiiii", "test"),
    ]
    assert dict(rejections.counts) == QUERYD_REJECTIONS
    assert rejections.examples["bad video id"] == [f"{QUERYD / 'val_list.txt'}:3"]
    assert rejections.examples["no captions"] == [f"{QUERYD / 'train_list.txt'}:5"]
    assert rejections.examples["video listed twice"] == [f"{QUERYD / 'train_list.txt'}:6", f"{QUERYD / 'train_list.txt'}:8"]
    captions = QUERYD / "raw_captions_combined_filtered.json"
    assert rejections.examples["bad description"] == [f"{captions}#video-ddddddddddd[0]"]
    assert rejections.examples["no descriptions"] == [f"{captions}#video-fffffffffff"]
    assert [validation_error(s) for s in samples] == [None] * len(samples)
    assert all(s.duration is None and s.task == {} for s in samples)
    assert "hhhhhhhhhhh" not in {s.id for s in samples}  # captioned but in no split list


def test_queryd_sentences_times_and_untimed_fallbacks(tmp_path):
    by_id = {s.id: s for s in read_all(queryd, queryd_cfg(), tmp_path)[0]}
    # Timed: sorted by start, equal starts keep the file's order; tokens joined by one space.
    assert segments(by_id["aaaaaaaaaaa"]) == [(2.0, 5.5, "He walks in ."), (10.5, 14.0, "A man opens the door ."), (10.5, 12.0, "The room is dark .")]
    # A description given as several pairs spans its first start to its last end.
    assert segments(by_id["ggggggggggg"]) == [(0.0, 3.0, "spans two audio clips"), (4.0, 6.0, "one pair")]
    # Dropped descriptions do not shift the times of the kept ones.
    assert segments(by_id["ddddddddddd"]) == [(3.0, 4.5, "the good one")]
    # No times entry, a count that differs, a reversed pair: the video's sentences are untimed.
    assert segments(by_id["bbbbbbbbbbb"]) == [(None, None, "a dog runs"), (None, None, "the dog stops")]
    assert segments(by_id["ccccccccccc"]) == [(None, None, "first sentence"), (None, None, "second sentence")]
    assert segments(by_id["iiiiiiiiiii"]) == [(None, None, "reversed times"), (None, None, "fine times")]

    untimed, _ = read_all(queryd, queryd_cfg(times="none"), tmp_path)
    assert all(not seg.timed for s in untimed for seg in s.segments)
    assert queryd.raw_inputs(queryd_cfg(times="none"))[1] == str(QUERYD / "train_list.txt")


def test_queryd_video_names_and_split_mapping(tmp_path):
    samples, _ = read_all(queryd, queryd_cfg(), tmp_path)
    assert samples[0].video == "s3://bucket/queryd/video-aaaaaaaaaaa.mp4"  # the QuerYD downloader's name
    samples, _ = read_all(queryd, queryd_cfg(keep_prefix=False, video_ext=".mkv"), tmp_path)
    assert samples[0].video == "s3://bucket/queryd/aaaaaaaaaaa.mkv"

    cfg = queryd_cfg(splits={"val_list": "test", "missing_list": "train"})
    assert queryd.raw_inputs(cfg)[2:] == [str(QUERYD / "val_list.txt")]
    samples, _ = read_all(queryd, cfg, tmp_path)
    assert [(s.id, s.split) for s in samples] == [("ddddddddddd", "test")]
    shutil.copy(QUERYD / "raw_captions_combined_filtered.json", tmp_path)
    with pytest.raises(DataError, match=r"none of train_list.txt, val_list.txt, test_list.txt found \(config key 'queryd.splits'\)"):
        queryd.raw_inputs(queryd_cfg(annotations=str(tmp_path)))


def test_queryd_pickle_needs_the_opt_in(tmp_path):
    root = queryd_copy(tmp_path)
    captions = json.loads((QUERYD / "raw_captions_combined_filtered.json").read_text())
    times = json.loads((QUERYD / "times_captions_combined_filtered.json").read_text())
    times["video-ccccccccccc"] = np.array([[1.0, 2.0], [3.0, 4.0]])  # numpy arrays, as a pickle may hold
    (root / "raw_captions_combined_filtered.pkl").write_bytes(pickle.dumps(captions))
    (root / "times_captions_combined_filtered.pkl").write_bytes(pickle.dumps(times))

    with pytest.raises(ConfigError) as info:
        read_all(queryd, queryd_cfg(annotations=str(root)), tmp_path)
    message = str(info.value)
    assert "queryd.allow_pickle" in message and "runs code" in message and "raw_captions_combined_filtered.json" in message
    assert "\n" not in message
    with pytest.raises(ConfigError, match="queryd.allow_pickle"):
        queryd.raw_inputs(queryd_cfg(annotations=str(root)))

    samples, rejections = read_all(queryd, queryd_cfg(annotations=str(root), allow_pickle=True), tmp_path)
    assert len(samples) == 6 and dict(rejections.counts) == QUERYD_REJECTIONS
    assert segments({s.id: s for s in samples}["ccccccccccc"]) == [(1.0, 2.0, "first sentence"), (3.0, 4.0, "second sentence")]

    # JSON captions need no opt-in; pickled times beside them still do.
    (root / "raw_captions_combined_filtered.json").write_text(json.dumps(captions))
    with pytest.raises(ConfigError, match="times_captions_combined_filtered.pkl is a Python pickle"):
        read_all(queryd, queryd_cfg(annotations=str(root)), tmp_path)
    samples, _ = read_all(queryd, queryd_cfg(annotations=str(root), times="none"), tmp_path)
    assert len(samples) == 6


class _Payload:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_queryd_never_unpickles_without_the_opt_in(tmp_path):
    root = queryd_copy(tmp_path)
    marker = tmp_path / "PWNED"
    (root / "raw_captions_combined_filtered.pkl").write_bytes(pickle.dumps({"video-aaaaaaaaaaa": _Payload(marker)}))
    with pytest.raises(ConfigError, match="queryd.allow_pickle"):
        read_all(queryd, queryd_cfg(annotations=str(root)), tmp_path)
    assert not marker.exists()


def test_queryd_malformed_files_and_config(tmp_path):
    root = queryd_copy(tmp_path)
    (root / "raw_captions_combined_filtered.json").write_text('["video-aaaaaaaaaaa"]')
    with pytest.raises(DataError, match="expected captions keyed by 'video-<id>', got a list"):
        read_all(queryd, queryd_cfg(annotations=str(root)), tmp_path)
    (root / "raw_captions_combined_filtered.json").write_text('{"video-aaaaaaaaaaa": [["a"]],\n "video-b": }')
    with pytest.raises(DataError, match=r"raw_captions_combined_filtered.json:2: invalid JSON"):
        read_all(queryd, queryd_cfg(annotations=str(root)), tmp_path)
    (root / "raw_captions_combined_filtered.json").write_text("{}")
    (root / "val_list.txt").write_bytes(b"video-aaaaaaaaaaa\nvideo-\xff\n")
    with pytest.raises(DataError, match=r"val_list.txt:2: not UTF-8 text \(byte 0xff at column 7\)"):
        read_all(queryd, queryd_cfg(annotations=str(root)), tmp_path)
    with pytest.raises(DataError, match=r"none of raw_captions_combined_filtered.json, raw_captions_combined_filtered.pkl found \(config key 'queryd.captions'\)"):
        read_all(queryd, queryd_cfg(annotations=str(tmp_path)), tmp_path)

    queryd.QuerydConfig()
    with pytest.raises(ConfigError, match="config key 'queryd.annotations' is required for --source queryd"):
        read_all(queryd, queryd.QuerydConfig(), tmp_path)
    with pytest.raises(ConfigError, match="'queryd.video_root' is required"):
        read_all(queryd, queryd_cfg(video_root=""), tmp_path)
    with pytest.raises(ConfigError, match="queryd.splits.val_list"):
        queryd_cfg(splits={"val_list": "validation"})
    with pytest.raises(ConfigError, match="queryd.captions"):
        queryd_cfg(captions="sub/captions.json")
    with pytest.raises(ConfigError, match="'queryd.allow_pickle': expected true/false"):
        from_dict(queryd.QuerydConfig, {"allow_pickle": "yes"}, prefix="queryd.")


# --- cmd (Condensed Movies) -----------------------------------------------------------------


def cmd_cfg(**kwargs) -> cmd.CmdConfig:
    return cmd.CmdConfig(**{"annotations": str(CMD), "video_root": "s3://bucket/cmd", **kwargs})


def test_cmd_samples_join_and_rejections(tmp_path):
    samples, rejections = read_all(cmd, cmd_cfg(), tmp_path)
    assert [(s.id, s.split) for s in samples] == [
        ("Sv-BxH3SVS8", "train"),
        ("WgMhaDEPGXo", "val"),
        ("9lqv-q15y1c", "test"),
        ("_nSQhWq7etg", "train"),  # the movie's first split.csv row wins over a conflicting one
    ]
    assert dict(rejections.counts) == {
        "duplicate videoid in clips.csv": 1,
        "conflicting split for movie": 1,
        "bad genre cell": 1,
        "duplicate description": 1,
        "extra description": 1,
        "bad upload_year": 1,
        "no split for movie": 1,
        "unknown split": 1,
        "missing imdbid": 1,
        "bad duration": 1,
        "videoid not in clips.csv": 1,
        "empty description": 1,
        "bad videoid": 1,
    }
    descriptions = CMD / "descriptions.csv"
    assert rejections.examples["extra description"] == [f"{descriptions}:8"]  # line numbers count the quoted newline
    assert rejections.examples["bad duration"] == [f"{descriptions}:13"]
    assert rejections.examples["conflicting split for movie"] == [f"{CMD / 'split.csv'}:7"]
    assert rejections.examples["duplicate videoid in clips.csv"] == [f"{CMD / 'clips.csv'}:11"]
    assert [validation_error(s) for s in samples] == [None] * len(samples)


def test_cmd_text_durations_videos_and_genres(tmp_path):
    les_mis, downton, cage, shazam = read_all(cmd, cmd_cfg(), tmp_path)[0]
    # Doubled quotes, a quoted newline, surrounding spaces: standard CSV, stripped.
    assert segments(les_mis) == [(0.0, 83.0, 'Jean Valjean and the students sing "One Day More" on the eve of battle.')]
    assert segments(downton) == [(0.0, 119.0, "Tom says goodnight to Mr. Branson,\nand the staff look on.")]
    # No duration (absent from durations.csv, or an empty cell): one untimed segment.
    assert (cage.duration, segments(cage)) == (None, [(None, None, "Laurent's parents meet his mother.")])
    assert (shazam.duration, segments(shazam)) == (None, [(None, None, "Billy and his siblings fight the Seven Deadly Sins.")])
    assert les_mis.duration == 83.0
    assert les_mis.video == "s3://bucket/cmd/2019/Sv-BxH3SVS8.mkv"  # the first clips.csv row wins
    assert shazam.video == "s3://bucket/cmd/2020/_nSQhWq7etg.mkv"  # upload_year "2020.0"
    assert les_mis.task == {"imdbid": "tt1707386", "genres": ["Drama", "Musical"]}
    assert cage.task == {"imdbid": "tt0077288"}  # its genre cell was rejected

    flat, rejections = read_all(cmd, cmd_cfg(layout="flat", video_ext=".mp4"), tmp_path)
    by_id = {s.id: s for s in flat}
    assert by_id["Sv-BxH3SVS8"].video == "s3://bucket/cmd/Sv-BxH3SVS8.mp4"
    assert segments(by_id["noyear00001"]) == [(0.0, 40.0, "A clip whose upload year is missing.")]  # no year needed
    assert "bad upload_year" not in rejections.counts


def test_cmd_movie_info_cells_are_never_evaluated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the fixture's payload would `touch PWNED` here
    samples, rejections = read_all(cmd, cmd_cfg(), tmp_path)
    assert rejections.counts["bad genre cell"] == 1
    assert rejections.examples["bad genre cell"] == [f"{CMD / 'movie_info.csv'}:4"]
    assert not (tmp_path / "PWNED").exists() and not (CMD / "PWNED").exists()

    marker = tmp_path / "EVALUATED"
    for cell in (f"__import__('os').system('touch {marker}')", "open('x', 'w')", "[x for x in ()]", "{'cast': 'dict'}", "['ok', 3]", "x" * 20_000):
        assert cmd._literal_list(cell) is None
    assert not marker.exists()
    assert cmd._literal_list("('Drama', ' War ')") == ["Drama", "War"]

    (tmp_path / "cmd").mkdir()
    for name in ("clips.csv", "durations.csv", "split.csv", "descriptions.csv"):
        shutil.copy(CMD / name, tmp_path / "cmd")
    (tmp_path / "cmd" / "movie_info.csv").write_text("imdbid,genres\ntt1707386,\"['Drama']\"\n")
    samples, _ = read_all(cmd, cmd_cfg(annotations=str(tmp_path / "cmd")), tmp_path)
    assert samples[0].task["genres"] == ["Drama"]  # a 'genres' column works as well as 'genre'
    (tmp_path / "cmd" / "movie_info.csv").unlink()
    samples, rejections = read_all(cmd, cmd_cfg(annotations=str(tmp_path / "cmd")), tmp_path)
    assert "genres" not in samples[0].task and "bad genre cell" not in rejections.counts  # optional file


def test_cmd_split_mapping_and_raw_inputs(tmp_path):
    samples, rejections = read_all(cmd, cmd_cfg(splits={"train": "train", "holdout": "test"}), tmp_path)
    assert [(s.id, s.split) for s in samples] == [("Sv-BxH3SVS8", "train"), ("_nSQhWq7etg", "train"), ("badsplit001", "test")]
    assert rejections.counts["unknown split"] == 2  # val and test movies are now outside the mapping
    assert cmd.raw_inputs(cmd_cfg()) == [str(CMD / n) for n in ("descriptions.csv", "clips.csv", "split.csv", "durations.csv", "movie_info.csv")]


def test_cmd_malformed_files_and_config(tmp_path):
    root = tmp_path / "cmd"
    shutil.copytree(CMD, root)
    (root / "durations.csv").write_text("videoid,length\nSv-BxH3SVS8,83\n")
    with pytest.raises(DataError, match=r"durations.csv: missing column 'duration' \(header: videoid,length\)"):
        read_all(cmd, cmd_cfg(annotations=str(root)), tmp_path)
    (root / "durations.csv").write_text("")
    with pytest.raises(DataError, match="durations.csv: missing column 'videoid'"):
        read_all(cmd, cmd_cfg(annotations=str(root)), tmp_path)
    shutil.copy(CMD / "durations.csv", root)
    (root / "movie_info.csv").write_text("imdbid,country\ntt1707386,['France']\n")
    with pytest.raises(DataError, match="movie_info.csv: missing column 'genre'"):
        read_all(cmd, cmd_cfg(annotations=str(root)), tmp_path)
    (root / "movie_info.csv").unlink()
    # An unbalanced quote swallows the rest of the file into one field until the csv module's limit.
    (root / "split.csv").write_text('imdbid,split\ntt1707386,train\ntt6398184,"val\n' + "tt0000001,train\n" * 10_000)
    with pytest.raises(DataError, match=r"split.csv:3: malformed CSV \(field larger than field limit"):
        read_all(cmd, cmd_cfg(annotations=str(root)), tmp_path)
    (root / "split.csv").write_bytes(b"imdbid,split\ntt1707386,tr\xe9in\n")
    with pytest.raises(DataError, match=r"split.csv:2: not UTF-8 text"):
        read_all(cmd, cmd_cfg(annotations=str(root)), tmp_path)
    (root / "clips.csv").unlink()
    with pytest.raises(DataError, match=r"clips.csv: not found \(config key 'cmd.annotations'\)"):
        cmd.raw_inputs(cmd_cfg(annotations=str(root)))

    cmd.CmdConfig()
    with pytest.raises(ConfigError, match="config key 'cmd.annotations' is required for --source cmd"):
        read_all(cmd, cmd.CmdConfig(), tmp_path)
    with pytest.raises(ConfigError, match="'cmd.video_root' is required"):
        read_all(cmd, cmd_cfg(video_root=""), tmp_path)
    with pytest.raises(ConfigError, match="cmd.layout"):
        from_dict(cmd.CmdConfig, {"layout": "nested"}, prefix="cmd.")
    with pytest.raises(ConfigError, match="cmd.layout"):
        cmd.CmdConfig(layout="nested")
    with pytest.raises(ConfigError, match="cmd.splits.validate"):
        cmd.CmdConfig(splits={"validate": "validation"})
    with pytest.raises(ConfigError, match="cmd.video_ext"):
        cmd.CmdConfig(video_ext="mkv")


# --- violin ---------------------------------------------------------------------------------


def violin_cfg(**kwargs) -> violin.ViolinConfig:
    return violin.ViolinConfig(**{"annotations": str(VIOLIN), "video_root": "s3://bucket/violin", **kwargs})


def value_cfg(**kwargs) -> violin.ViolinConfig:
    return violin_cfg(**{"annotations": str(VALUE), "format": "value", **kwargs})


def test_violin_annotation_samples_and_rejections(tmp_path):
    samples, rejections = read_all(violin, violin_cfg(), tmp_path)
    assert [(s.id, s.split, s.task["label"]) for s in samples] == [
        ("1-0-true", "train", 1),
        ("1-0-false", "train", 0),
        ("1-1-true", "train", 1),
        ("1-1-false", "train", 0),
        ("2-0-true", "val", 1),  # 'validate' in the release
        ("2-0-false", "val", 0),
        ("2-2-true", "val", 1),  # pair 1 was malformed: rejected alone
        ("2-2-false", "val", 0),
        ("10-0-true", "test", 1),
        ("10-0-false", "test", 0),
    ]
    assert dict(rejections.counts) == {
        "malformed statement pair": 2,
        "statement is not a list": 1,
        "unknown split": 1,
        "missing field 'file'": 1,
        "missing field 'split'": 1,
        "subtitle without text": 1,
        "record is not a JSON object": 1,
        "bad file name": 1,
        "sub is not a list": 1,
    }
    path = VIOLIN / "violin_annotation.json"
    assert rejections.examples["malformed statement pair"] == [f"{path}#1/2", f"{path}#2/1"]
    assert rejections.examples["unknown split"] == [f"{path}#4"]  # 'val' is not a release value
    assert [validation_error(s) for s in samples] == [None] * len(samples)


def test_violin_annotation_task_fields_subtitles_and_videos(tmp_path):
    by_id = {s.id: s for s in read_all(violin, violin_cfg(), tmp_path)[0]}
    first = by_id["1-1-true"]
    assert first.task["statement"] == "Monica is in the kitchen."
    assert segments(first) == [(None, None, "Monica is in the kitchen.")]
    assert "clip" not in first.task and first.duration is None
    assert first.task["subtitles"] == [
        {"start": 1.2, "end": 2.5, "text": "Hey, Monica!"},
        {"start": None, "end": None, "text": "What's going on?"},  # [text] alone
        {"start": None, "end": None, "text": "Odd times"},  # unparsable time
    ]
    assert by_id["10-0-false"].task["subtitles"] == [
        {"start": None, "end": None, "text": "Reversed times."},
        {"start": 1.5, "end": 2.5, "text": "String times."},
        {"start": None, "end": None, "text": "A bare string subtitle."},
    ]
    assert first.video == "s3://bucket/violin/friends_s01e02_seg02_clip_00.mp4"  # no extension: .mp4
    assert by_id["2-0-true"].video == "s3://bucket/violin/436.mp4"  # kept as annotated
    assert by_id["10-0-true"].video == "s3://bucket/violin/clip10.mkv"  # stripped, kept

    by_id = {s.id: s for s in read_all(violin, violin_cfg(video_ext=".webm"), tmp_path)[0]}
    assert by_id["2-0-true"].video == "s3://bucket/violin/436.webm"
    assert by_id["1-0-true"].video == "s3://bucket/violin/friends_s01e02_seg02_clip_00.webm"


def test_violin_value_form(tmp_path):
    samples, rejections = read_all(violin, value_cfg(), tmp_path)
    assert [(s.id, s.split, s.task["label"]) for s in samples] == [
        ("friends_s01e02_seg02_clip_00-0-true", "train", 1),
        ("friends_s01e02_seg02_clip_00-0-false", "train", 0),
        ("movieclip_0007-mc-7-true", "train", 1),
        ("val_clip.mp4-9-false", "val", 0),
    ]
    assert dict(rejections.counts) == {
        "duplicate subtitles for video": 1,
        "subtitle without text": 1,
        "subtitle record needs 'vid_name' and list 'sub'": 1,
        "answer is not 0 or 1": 1,
        "missing field 'paired_id'": 1,
        "record is not a JSON object": 1,
        "bad vid_name": 1,
        "bad paired_id": 1,
        "statement is not a string": 1,
    }
    assert rejections.examples["answer is not 0 or 1"] == [f"{VALUE / 'violin_train_release.jsonl'}:4"]
    assert rejections.examples["duplicate subtitles for video"] == [f"{VALUE / 'violin_subtitles.jsonl'}:2"]
    friends, _, movie, val = samples
    assert friends.task["subtitles"] == [{"start": 1.2, "end": 2.5, "text": "Hey, Monica!"}, {"start": 2.6, "end": 4.0, "text": "What's going on?"}]
    assert movie.task == {"statement": "A car explodes.", "label": 1, "subtitles": []}  # its subtitle record was rejected
    assert val.task["subtitles"] == [{"start": None, "end": None, "text": "Untimed line."}]
    assert (friends.video, val.video) == ("s3://bucket/violin/friends_s01e02_seg02_clip_00.mp4", "s3://bucket/violin/val_clip.mp4")
    assert [validation_error(s) for s in samples] == [None] * len(samples)

    assert violin.raw_inputs(value_cfg()) == [str(VALUE / n) for n in ("violin_train_release.jsonl", "violin_val_release.jsonl", "violin_subtitles.jsonl")]
    samples, rejections = read_all(violin, value_cfg(value_subtitles="", value_files={"violin_val_release.jsonl": "test"}), tmp_path)
    assert [(s.id, s.split, s.task["subtitles"]) for s in samples] == [("val_clip.mp4-9-false", "test", [])]
    assert rejections.total == 0


def test_violin_malformed_files_and_config(tmp_path):
    (tmp_path / "violin_annotation.json").write_text("[]")
    with pytest.raises(DataError, match="expected a JSON object keyed by clip id, got a list"):
        read_all(violin, violin_cfg(annotations=str(tmp_path)), tmp_path)
    (tmp_path / "violin_annotation.json").write_text('{"1": {"file": "a",\n')
    with pytest.raises(DataError, match=r"violin_annotation.json:2: invalid JSON"):
        read_all(violin, violin_cfg(annotations=str(tmp_path)), tmp_path)
    (tmp_path / "violin_train_release.jsonl").write_text('{"paired_id": 1}\n{broken\n')
    with pytest.raises(DataError, match=r"violin_train_release.jsonl:2: invalid JSON"):
        read_all(violin, value_cfg(annotations=str(tmp_path), value_subtitles=""), tmp_path)
    with pytest.raises(DataError, match=r"violin_subtitles.jsonl: not found \(config key 'violin.value_subtitles'"):
        read_all(violin, value_cfg(annotations=str(tmp_path)), tmp_path)
    with pytest.raises(DataError, match=r"none of .* found \(config key 'violin.value_files'\)"):
        read_all(violin, value_cfg(annotations=str(tmp_path / "empty")), tmp_path)

    violin.ViolinConfig()
    with pytest.raises(ConfigError, match="config key 'violin.annotations' is required for --source violin"):
        read_all(violin, violin.ViolinConfig(), tmp_path)
    with pytest.raises(ConfigError, match="'violin.video_root' is required"):
        read_all(violin, violin_cfg(video_root=""), tmp_path)
    with pytest.raises(ConfigError, match="violin.format"):
        from_dict(violin.ViolinConfig, {"format": "hero"}, prefix="violin.")
    with pytest.raises(ConfigError, match="violin.value_files.a.jsonl"):
        violin.ViolinConfig(value_files={"a.jsonl": "validate"})
    with pytest.raises(ConfigError, match="violin.video_ext"):
        violin.ViolinConfig(video_ext="mp4")


# --- through the prepare stage --------------------------------------------------------------


@pytest.mark.parametrize(
    "source, options, samples, splits",
    [
        ("queryd", {"annotations": str(QUERYD), "video_root": "/videos"}, 6, {"train": 4, "val": 1, "test": 1}),
        ("cmd", {"annotations": str(CMD), "video_root": "/videos"}, 4, {"train": 2, "val": 1, "test": 1}),
        ("violin", {"annotations": str(VIOLIN), "video_root": "/videos"}, 10, {"train": 4, "val": 4, "test": 2}),
        ("violin", {"annotations": str(VALUE), "video_root": "/videos", "format": "value"}, 4, {"train": 3, "val": 1, "test": 0}),
    ],
)
def test_prepare_writes_each_source(tmp_path, source, options, samples, splits):
    from lfvila_cli.data.corpus import read_corpus
    from lfvila_cli.data.prepare import PrepareConfig, prepare, raw_inputs

    cfg = from_dict(PrepareConfig, {"source": source, source: options})
    summary = prepare(cfg, tmp_path)
    assert (summary["samples"], summary["splits"]) == (samples, splits)
    assert raw_inputs(cfg)
    written = list(read_corpus(tmp_path / "samples.jsonl"))
    assert len(written) == samples and all(validation_error(s) is None for s in written)
