"""Readers on the published formats' rough edges: error positions, truncated files, the
datasets' own duplicate and range rules, file layouts as downloaded. Fixtures are small and
hand-written (under ``tests/fixtures/formats/`` or built in the test)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from lfvila_cli.data.corpus import Rejections, Sample
from lfvila_cli.data.formats import activitynet, cmd, how2qa, jsonl, load_json, queryd, violin
from lfvila_cli.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures" / "formats"
HOW2QA = FIXTURES / "how2qa"
CMD = FIXTURES / "cmd"
QUERYD = FIXTURES / "queryd"


def read_all(module, cfg, out_dir: Path) -> tuple[list[Sample], Rejections]:
    rejections = Rejections()
    return list(module.read(cfg, out_dir, rejections)), rejections


def how2qa_row(i: int) -> str:
    return f'abcdefghijk,[{i}:{i + 5}],"wrong, one",wrong two,wrong three,question {i}?,right {i}\n'


def error_of(module, cfg, tmp_path: Path) -> str:
    with pytest.raises(DataError) as info:
        read_all(module, cfg, tmp_path)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- error positions: a bad byte is reported at its own line ---------------------------------


def test_how2qa_csv_bad_byte_is_reported_at_its_line(tmp_path):
    rows = [how2qa_row(i).encode() for i in range(400)]
    rows[299] = rows[299].replace(b"question", b"qu\xe9stion")  # line 300, Latin-1 e-acute
    (tmp_path / "how2QA_val_release.csv").write_bytes(b"".join(rows))
    cfg = how2qa.How2qaConfig(annotations=str(tmp_path), video_root="/v")
    message = error_of(how2qa, cfg, tmp_path)
    assert f"{tmp_path / 'how2QA_val_release.csv'}:300: not UTF-8 text" in message
    assert "byte 0xe9" in message and "column 60" in message

    (tmp_path / "how2QA_val_release.csv").write_bytes(how2qa_row(0).encode() + b"\xff" + how2qa_row(1).encode())
    assert ":2: not UTF-8 text" in error_of(how2qa, cfg, tmp_path)


def test_jsonl_and_split_list_bad_bytes_are_reported_at_their_line(tmp_path):
    good = json.dumps({"id": "a", "video": "a.mp4", "segments": [{"start": 0, "end": 1, "text": "x" * 50}]}) + "\n"
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(good.encode() + b'{"id": "\xff"}\n' + good.encode() * 300)
    assert f"{path}:2: not UTF-8 text (byte 0xff at column 9)" in error_of(jsonl, jsonl.JsonlConfig(path=str(path)), tmp_path)
    # Compressed files too: the position is on the decompressed text.
    gz = tmp_path / "corpus.jsonl.gz"
    gz.write_bytes(gzip.compress(good.encode() * 250 + b"\n\xc3(\n"))
    assert f"{gz}:252: not UTF-8 text (byte 0xc3 at column 1)" in error_of(jsonl, jsonl.JsonlConfig(path=str(gz)), tmp_path)

    root = tmp_path / "queryd"
    root.mkdir()
    shutil.copy(QUERYD / "raw_captions_combined_filtered.json", root)
    (root / "train_list.txt").write_bytes(b"video-aaaaaaaaaaa\n" * 500 + b"video-\xff\n")
    message = error_of(queryd, queryd.QuerydConfig(annotations=str(root), video_root="/v", times="none"), tmp_path)
    assert f"{root / 'train_list.txt'}:501: not UTF-8 text" in message


def test_whole_file_json_bad_bytes_name_line_and_column(tmp_path):
    path = tmp_path / "val_1.json"
    path.write_bytes(b'{\n  "v_a": {"duration": 5,\n    "sentences": ["caf\xe9"]}}\n')
    with pytest.raises(DataError) as info:
        load_json(str(path))
    assert str(info.value) == f"{path}:3: not UTF-8 text (byte 0xe9 at column 23)"
    # A multi-byte character before the bad byte counts as one column, as in JSON's own errors.
    path.write_bytes('{"é": "'.encode() + b"\x80" + b'"}')
    with pytest.raises(DataError, match=r"val_1.json:1: not UTF-8 text \(byte 0x80 at column 8\)"):
        load_json(str(path))


def test_cmd_csv_bad_byte_is_reported_at_its_line(tmp_path):
    root = tmp_path / "cmd"
    shutil.copytree(CMD, root)
    rows = b"".join(f"tt{i:07d},train\n".encode() for i in range(300))
    (root / "split.csv").write_bytes(b"imdbid,split\n" + rows + b"tt1707386,tr\xe9in\n")
    assert f"{root / 'split.csv'}:302: not UTF-8 text" in error_of(cmd, cmd.CmdConfig(annotations=str(root), video_root="/v"), tmp_path)


# --- truncated CSV: a file that ends inside a quoted field -----------------------------------


def test_how2qa_csv_cut_inside_a_quoted_field_is_an_error(tmp_path):
    whole = how2qa_row(0) + 'abcdefghijk,[1:5],a,b,c,What is his channel called?,"his channel is called ""whatsdev"" on youtube"\n'
    path = tmp_path / "how2QA_val_release.csv"
    path.write_text(whole)
    cfg = how2qa.How2qaConfig(annotations=str(tmp_path), video_root="/v")
    samples, _ = read_all(how2qa, cfg, tmp_path)
    assert samples[1].task["candidates"][samples[1].task["answer"]] == 'his channel is called "whatsdev" on youtube'

    path.write_text(whole[: whole.index("whatsdev") + 4])  # cut after 'his channel is called ""what'
    assert error_of(how2qa, cfg, tmp_path) == f"{path}:2: the file ends inside a quoted field that opens on this line (truncated?)"
    path.write_text(whole[: whole.index("whatsdev") + 4] + "\n\n")  # the cut field may hold newlines
    assert error_of(how2qa, cfg, tmp_path).startswith(f"{path}:2: the file ends inside a quoted field")


def test_cmd_csv_cut_inside_a_quoted_field_names_the_line_it_opened(tmp_path):
    root = tmp_path / "cmd"
    shutil.copytree(CMD, root)
    text = (CMD / "descriptions.csv").read_text(encoding="utf-8-sig")
    # Line 17 opens a record whose first quoted field closes on line 18, where one opens that never closes.
    text += '"noyear\n00002","A quoted description that\nruns on and on,\nand is cut'
    (root / "descriptions.csv").write_text(text)
    message = error_of(cmd, cmd.CmdConfig(annotations=str(root), video_root="/v"), tmp_path)
    assert message == f"{root / 'descriptions.csv'}:18: the file ends inside a quoted field that opens on this line (truncated?)"


# --- Condensed Movies: the loader's duplicate rule, optional durations -----------------------


def cmd_copy(tmp_path: Path, descriptions: str | None = None) -> Path:
    root = tmp_path / "cmd"
    shutil.copytree(CMD, root)
    if descriptions is not None:
        (root / "descriptions.csv").write_text(descriptions)
    return root


def test_cmd_description_shared_by_several_clips_is_dropped_for_all(tmp_path):
    root = cmd_copy(
        tmp_path,
        "videoid,description\n"
        "Sv-BxH3SVS8,Official clip from the movie.\n"
        "WgMhaDEPGXo,  Official clip from the movie.  \n"
        "9lqv-q15y1c,Laurent's parents meet his mother.\n"
        "_nSQhWq7etg,Official clip from the movie.\n"
        "Sv-BxH3SVS8,Jean Valjean sings.\n"
        "9lqv-q15y1c,Laurent's parents meet his mother.\n",
    )
    samples, rejections = read_all(cmd, cmd.CmdConfig(annotations=str(root), video_root="/v"), tmp_path)
    # As the release's loader (drop_duplicates(subset=['description'], keep=False)): the shared
    # text goes for every clip, before a clip's first remaining description is taken.
    assert [(s.id, s.segments[0].text) for s in samples] == [
        ("9lqv-q15y1c", "Laurent's parents meet his mother."),
        ("Sv-BxH3SVS8", "Jean Valjean sings."),
    ]
    assert dict(rejections.counts) == {
        "description shared by several clips": 3,
        "duplicate description": 1,  # a row repeated for the same clip counts once
        "duplicate videoid in clips.csv": 1,
        "conflicting split for movie": 1,
        "bad genre cell": 1,
    }
    assert rejections.examples["description shared by several clips"] == [f"{root / 'descriptions.csv'}:{n}" for n in (2, 3, 5)]


def test_cmd_durations_file_is_optional(tmp_path, caplog):
    root = cmd_copy(tmp_path)
    (root / "durations.csv").unlink()
    cfg = cmd.CmdConfig(annotations=str(root), video_root="/v")
    assert cmd.raw_inputs(cfg) == [str(root / n) for n in ("descriptions.csv", "clips.csv", "split.csv", "movie_info.csv")]
    with caplog.at_level("WARNING"):
        samples, rejections = read_all(cmd, cfg, tmp_path)
    assert [s.id for s in samples] == ["Sv-BxH3SVS8", "WgMhaDEPGXo", "9lqv-q15y1c", "_nSQhWq7etg", "baddur00001"]
    assert all(s.duration is None and not s.segments[0].timed for s in samples)
    assert "bad duration" not in rejections.counts
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "durations.csv not found" in warnings[0]


# --- How2QA: the files as published ----------------------------------------------------------

RELEASE = FIXTURES / "how2qa_release"  # how2QA_val_release.csv + how2QA_test_public_release.csv, no train file


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


def test_how2qa_reads_both_published_files_with_one_warning(tmp_path, caplog):
    from lfvila_cli.data.prepare import PrepareConfig, prepare, raw_inputs

    cfg = PrepareConfig(source="how2qa", how2qa=how2qa.How2qaConfig(annotations=str(RELEASE), video_root="/v"))
    with caplog.at_level("WARNING"):
        # What a run does: fingerprint the inputs (status does the same), then read.
        assert raw_inputs(cfg) == [str(RELEASE / "how2QA_val_release.csv"), str(RELEASE / "how2QA_test_public_release.csv")]
        summary = prepare(cfg, tmp_path)
    assert summary["splits"] == {"train": 0, "val": 2, "test": 1}
    warnings = [w for w in warnings_of(caplog) if w.startswith("how2qa")]
    assert len(warnings) == 1 and "how2QA_train_release.csv not found" in warnings[0]


def test_how2qa_never_ignores_a_published_file_silently(tmp_path, caplog):
    cfg = how2qa.How2qaConfig(annotations=str(RELEASE), video_root="/v", splits={"how2QA_val_release": "val"})
    with caplog.at_level("WARNING"):
        samples, _ = read_all(how2qa, cfg, tmp_path)
    assert {s.split for s in samples} == {"val"}
    assert any("how2QA_test_public_release.csv" in w and "how2qa.splits" in w for w in warnings_of(caplog))


def test_how2qa_clip_times_are_rounded_to_the_millisecond(tmp_path):
    samples, _ = read_all(how2qa, how2qa.How2qaConfig(annotations=str(RELEASE), video_root="/v"), tmp_path)
    assert samples[0].task["clip"] == [127.835, 187.835]  # (151.3 + 164.37) / 2 - 30 = 127.83500000000001
    assert (samples[0].segments[0].start, samples[0].segments[0].end) == (127.835, 187.835)
    assert how2qa.clip_window(151.3, 164.37, 60.0) == (127.835, 187.835)


# --- ActivityNet Captions: ends past the duration, stable ids --------------------------------

ANET = FIXTURES / "activitynet"


def test_activitynet_clamps_ends_past_the_duration_and_counts_them(tmp_path):
    from lfvila_cli.data.prepare import PrepareConfig, prepare

    cfg = PrepareConfig(source="activitynet", activitynet=activitynet_cfg())
    prepare(cfg, tmp_path)
    stats = json.loads((tmp_path / "stats.json").read_text())
    # v_val0001 (duration 20) has [10, 25]: clamped to [10, 20], the video and both sentences kept.
    assert stats["adjusted"]["by_reason"] == {"segment end clamped to the duration": 1}
    assert stats["adjusted"]["examples"]["segment end clamped to the duration"] == [f"{ANET / 'val_1.json'}#v_val0001[1]"]
    assert "segment outside the video" not in stats["rejected"]["by_reason"]
    written = {r["id"]: r for r in map(json.loads, (tmp_path / "samples.jsonl").read_text().splitlines())}
    assert [(g["start"], g["end"]) for g in written["val_1-v_val0001"]["segments"]] == [(0.0, 10.0), (10.0, 20.0)]
    # Rejections found by the central validation name the file and the video, as the reader's do.
    assert stats["rejected"]["examples"]["segment ends before it starts"] == [f"{ANET / 'train.json'}#v_train0004"]
    assert stats["rejected"]["examples"]["empty text"] == [f"{ANET / 'train.json'}#v_train0007"]


def test_activitynet_segment_starting_past_the_duration_is_dropped_alone(tmp_path):
    entry = {"duration": 10.0, "timestamps": [[0, 4], [10.5, 12], [4, 10.2]], "sentences": ["one", " past the end", " two"]}
    (tmp_path / "train.json").write_text(json.dumps({"v_short": entry}))
    (sample,), rejections = read_all(activitynet, activitynet_cfg(annotations=str(tmp_path)), tmp_path)
    assert [(g.start, g.end, g.text) for g in sample.segments] == [(0.0, 4.0, "one"), (4.0, 10.0, "two")]
    assert rejections.examples["segment starts past the duration"] == [f"{tmp_path / 'train.json'}#v_short[1]"]
    assert dict(rejections.adjusted.counts) == {"segment end clamped to the duration": 1}


def test_activitynet_ids_do_not_change_when_another_file_is_added(tmp_path):
    root = tmp_path / "captions"
    root.mkdir()
    for name in ("train.json", "val_1.json"):
        shutil.copy(ANET / name, root)
    before = {s.id for s in read_all(activitynet, activitynet_cfg(annotations=str(root)), tmp_path)[0]}
    shutil.copy(ANET / "val_2.json", root)  # annotates v_shared0001 again
    after = [s.id for s in read_all(activitynet, activitynet_cfg(annotations=str(root)), tmp_path)[0]]
    assert before < set(after) and len(after) == len(set(after))
    assert "val_1-v_shared0001" in before and "val_2-v_shared0001" in after


def activitynet_cfg(**kwargs):
    return activitynet.ActivityNetConfig(**{"annotations": str(ANET), "video_root": "/v", **kwargs})


# --- DiDeMo: the video's own chunks, reversed pairs ------------------------------------------


def test_didemo_times_are_clipped_to_the_videos_chunks_and_reversed_pairs_counted(tmp_path):
    from lfvila_cli.data.formats import didemo

    moments = [
        # A 5-chunk video (shorter than 25 s): chunk 5 does not exist and is clipped to chunk 4.
        {"video": "a.mp4", "num_segments": 5, "times": [[4, 5], [4, 5], [3, 4], [5, 5]], "description": "the end", "annotation_id": 1},
        {"video": "a.mp4", "num_segments": 5, "times": [[1, 0], [0, 1], [0, 1], [2, 1]], "description": "the start", "annotation_id": 2},
        {"video": "b.mp4", "num_segments": "six", "times": [[0, 0]], "description": "bad count", "annotation_id": 3},
        {"video": "b.mp4", "num_segments": 6, "times": [[5, 5], [5, 5], [4, 5], [5, 5]], "description": "last chunk", "annotation_id": 4},
    ]
    (tmp_path / "train_data.json").write_text(json.dumps(moments))
    samples, rejections = read_all(didemo, didemo.DidemoConfig(annotations=str(tmp_path), video_root="/v"), tmp_path)
    a, b = samples
    assert [(g.start, g.end, g.text) for g in a.segments] == [(0.0, 10.0, "the start"), (20.0, 25.0, "the end")]
    assert [(g.start, g.end) for g in b.segments] == [(25.0, 30.0)]
    path = tmp_path / "train_data.json"
    assert dict(rejections.counts) == {"reversed times pair": 2, "bad num_segments": 1}
    assert rejections.examples["reversed times pair"] == [f"{path}#1/times[0]", f"{path}#1/times[3]"]
    assert dict(rejections.adjusted.counts) == {"times clipped to num_segments": 3}
    assert rejections.adjusted.examples["times clipped to num_segments"][0] == f"{path}#0/times[0]"


def test_didemo_docs_describe_the_official_evaluation():
    from lfvila_cli.data.formats import didemo

    doc = " ".join(didemo.__doc__.split())
    assert "majority" not in doc and "best 3 of the 4" in doc
    readme = " ".join((Path(__file__).parent.parent / "README.md").read_text().split())
    assert "best 3 of the 4" in readme


# --- VIOLIN (VALUE layout), QuerYD bare ids, HD-VILA without text, ActivityNet-QA ------------

VALUE = FIXTURES / "violin_value"


def test_violin_value_finds_subtitles_where_the_value_download_puts_them(tmp_path):
    # The VALUE download script: ann/violin_subtitles.jsonl beside ann/violin/violin_<split>_release.jsonl.
    (tmp_path / "ann" / "violin").mkdir(parents=True)
    shutil.copy(VALUE / "violin_subtitles.jsonl", tmp_path / "ann")
    shutil.copy(VALUE / "violin_train_release.jsonl", tmp_path / "ann" / "violin")
    cfg = violin.ViolinConfig(annotations=str(tmp_path / "ann" / "violin"), format="value", video_root="/v")
    assert violin.raw_inputs(cfg) == [str(tmp_path / "ann" / "violin" / "violin_train_release.jsonl"), str(tmp_path / "ann" / "violin_subtitles.jsonl")]
    samples, _ = read_all(violin, cfg, tmp_path)
    assert samples[0].task["subtitles"][0] == {"start": 1.2, "end": 2.5, "text": "Hey, Monica!"}


def test_violin_value_ids_do_not_repeat_the_clip_name(tmp_path):
    lines = [
        {"paired_id": "friends_s01e02_seg02_clip_00_1", "vid_name": "friends_s01e02_seg02_clip_00", "statement": "Monica smiles.", "answer": 1},
        {"paired_id": "friends_s01e02_seg02_clip_00_1", "vid_name": "friends_s01e02_seg02_clip_00", "statement": "Monica cries.", "answer": 0},
        {"paired_id": 3, "vid_name": "movieclip_0007", "statement": "A car explodes.", "answer": 1},
    ]
    (tmp_path / "violin_val_release.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    cfg = violin.ViolinConfig(annotations=str(tmp_path), format="value", value_subtitles="", video_root="/v")
    assert [s.id for s in read_all(violin, cfg, tmp_path)[0]] == [
        "friends_s01e02_seg02_clip_00_1-true",
        "friends_s01e02_seg02_clip_00_1-false",
        "movieclip_0007-3-true",  # a paired_id without the clip's name still gets it
    ]


def test_queryd_split_lists_with_bare_youtube_ids(tmp_path):
    root = tmp_path / "queryd"
    root.mkdir()
    shutil.copy(QUERYD / "raw_captions_combined_filtered.json", root)
    (root / "train_list.txt").write_text("aaaaaaaaaaa\nvideo-bbbbbbbbbbb\nbbbbbbbbbbb\n../x\n")
    cfg = queryd.QuerydConfig(annotations=str(root), video_root="/v", times="none")
    samples, rejections = read_all(queryd, cfg, tmp_path)
    assert [(s.id, s.video) for s in samples] == [("aaaaaaaaaaa", "/v/video-aaaaaaaaaaa.mp4"), ("bbbbbbbbbbb", "/v/video-bbbbbbbbbbb.mp4")]
    assert dict(rejections.counts) == {"video listed twice": 1, "bad video id": 1}


def test_hdvila_without_transcripts_names_the_key_to_set(tmp_path):
    from lfvila_cli.data.formats import hdvila
    from lfvila_cli.data.prepare import PrepareConfig, prepare
    from lfvila_cli.errors import ConfigError

    clips = [{"clip_id": f"aaaaaaaaaaa.{k}.mp4", "span": [f"00:00:{5 * k:02d}.000", f"00:00:{5 * k + 5:02d}.000"]} for k in range(1, 6)]
    meta = tmp_path / "hdvila_part0.jsonl"
    meta.write_text(json.dumps({"video_id": "aaaaaaaaaaa", "url": "", "clip": clips}) + "\n")
    cfg = PrepareConfig(source="hdvila", hdvila=hdvila.HdvilaConfig(metadata=str(meta), video_root="/v"))
    with pytest.raises(ConfigError) as info:
        prepare(cfg, tmp_path / "out")
    message = str(info.value)
    assert "'hdvila.text'" in message and "5 clip(s)" in message and "\n" not in message
    # With some inline text, the rejection reason itself names the key.
    clips[0]["text"] = "hello"
    meta.write_text(json.dumps({"video_id": "aaaaaaaaaaa", "url": "", "clip": clips}) + "\n")
    _, rejections = read_all(hdvila, hdvila.HdvilaConfig(metadata=str(meta), video_root="/v", min_clips=1), tmp_path)
    assert dict(rejections.counts) == {"missing text (hdvila.text not set)": 4}


def test_anetqa_counts_a_lost_question_once(tmp_path):
    from lfvila_cli.data.formats import anetqa

    questions = [
        {"question": 42, "question_id": "v_a_0", "video_name": "a"},  # its answer is fine
        {"question": "is it sunny", "question_id": "v_b_0", "video_name": "b"},  # its answer is not
        {"question": "what is this", "question_id": "v_c_0", "video_name": "c"},
    ]
    answers = [{"answer": "yes", "question_id": "v_a_0"}, {"answer": 7, "question_id": "v_b_0"}, {"answer": "a dog", "question_id": "v_c_0"}]
    (tmp_path / "train_q.json").write_text(json.dumps(questions))
    (tmp_path / "train_a.json").write_text(json.dumps(answers))
    samples, rejections = read_all(anetqa, anetqa.AnetQaConfig(annotations=str(tmp_path), video_root="/v"), tmp_path)
    assert [s.id for s in samples] == ["v_c_0"]
    assert dict(rejections.counts) == {"question is not a string": 1, "answer is not a string": 1}


# --- a NUL byte in a video path ----------------------------------------------------------------


def test_prepare_rejects_a_nul_byte_in_a_video_path(tmp_path):
    from lfvila_cli.data.prepare import PrepareConfig, prepare

    segment = {"start": 0.0, "end": 2.0, "text": "a sentence"}
    records = [
        {"id": "fine", "video": "/v/fine.mp4", "segments": [segment]},
        {"id": "nul", "video": "/v/bad\u0000name.mp4", "segments": [segment]},
        {"id": "nul-segment", "video": "/v/dir", "segments": [{**segment, "video": "/v/dir/clip\u0000.mp4"}]},
    ]
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = prepare(PrepareConfig(source="jsonl", jsonl=jsonl.JsonlConfig(path=str(path))), tmp_path / "out")
    assert summary["samples"] == 1
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["rejected"]["by_reason"] == {"NUL byte in video path": 2}
    assert stats["rejected"]["examples"]["NUL byte in video path"] == [f"{path}:2", f"{path}:3"]


def test_rejections_by_prepare_name_the_file_and_record_for_every_reader(tmp_path):
    from lfvila_cli.data.formats import lfvila_jsonl
    from lfvila_cli.data.prepare import PrepareConfig, prepare

    retrieval = FIXTURES / "lfvila_jsonl" / "retrieval.jsonl"
    cfg = PrepareConfig(source="lfvila-jsonl", lfvila_jsonl=lfvila_jsonl.LfvilaJsonlConfig(task="retrieval", files={str(retrieval): "train"}, video_root="/v"))
    prepare(cfg, tmp_path)
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["rejected"]["examples"]["duplicate id"] == [f"{retrieval}:10"]  # the repeated clip_id's line
