"""Readers of the fine-tuning task formats: How2QA (CSV and HERO), ActivityNet-QA and the
LF-VILA authors' pre-processed JSON Lines. Fixtures are hand-written in the published formats,
with one record per rejection rule."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lfvila_cli.config import from_dict, resolve
from lfvila_cli.data.corpus import Rejections, Sample, read_corpus, validation_error
from lfvila_cli.data.formats import anetqa, how2qa, lfvila_jsonl, shuffle_candidates
from lfvila_cli.data.prepare import PrepareConfig, key_config, prepare
from lfvila_cli.errors import ConfigError, DataError

FIXTURES = Path(__file__).parent / "fixtures" / "formats"
HOW2QA = FIXTURES / "how2qa"
ANETQA = FIXTURES / "anetqa"
LFVILA = FIXTURES / "lfvila_jsonl"


def read_all(module, cfg, out_dir: Path) -> tuple[list[Sample], Rejections]:
    rejections = Rejections()
    return list(module.read(cfg, out_dir, rejections)), rejections


def correct(sample: Sample) -> str:
    return sample.task["candidates"][sample.task["answer"]]


# --- how2qa: the official CSV ---------------------------------------------------------------


def csv_cfg(**kwargs) -> how2qa.How2qaConfig:
    return how2qa.How2qaConfig(**{"annotations": str(HOW2QA), "video_root": "s3://bucket/how2", **kwargs})


def test_how2qa_csv_samples_and_rejections(tmp_path):
    samples, rejections = read_all(how2qa, csv_cfg(), tmp_path)
    train = HOW2QA / "how2QA_train_release.csv"
    assert [(s.id, s.split) for s in samples] == [
        ("how2QA_train_release-0", "train"),
        ("how2QA_train_release-1", "train"),
        ("how2QA_train_release-10", "train"),  # row 9 is blank: ids keep the row index
        ("how2QA_val_release-0", "val"),
    ]
    assert dict(rejections.counts) == {
        "expected 7 columns": 1,
        "bad video id": 1,
        "bad span": 1,
        "span ends before it starts": 1,
        "empty question": 1,
        "empty answer": 2,  # a distractor, then the correct answer
    }
    assert rejections.examples["empty answer"] == [f"{train}#7", f"{train}#8"]
    assert all(validation_error(s) is None for s in samples)


def test_how2qa_csv_fields_quoting_and_shuffled_answer(tmp_path):
    first, zero, long, val = read_all(how2qa, csv_cfg(), tmp_path)[0]
    # Quoted commas and doubled quotes survive; the repeated distractor is kept (4 candidates).
    assert first.task["question"] == "What does the man do, after frying?"
    assert sorted(first.task["candidates"]) == sorted(["He cuts the onion", "He washes, then dries, the pan", "He cuts the onion", "He serves the dish"])
    assert correct(first) == "He serves the dish"
    assert zero.task["question"] == 'What does she say, "hello" or "bye"?'
    # The correct answer is last in the CSV; the recorded index follows the keyed shuffle.
    order, answer = shuffle_candidates(["She laughs", "She leaves", "She sits down", "She says hello"], 3, key="how2QA_train_release:1")
    assert (zero.task["candidates"], zero.task["answer"]) == (order, answer)
    assert correct(zero) == "She says hello"
    again = read_all(how2qa, csv_cfg(), tmp_path)[0]
    assert [s.task for s in again] == [s.task for s in (first, zero, long, val)]  # deterministic
    assert first.video == "s3://bucket/how2/abcdefghijk.mp4" and first.duration is None
    assert first.task["subtitles"] == [] and "qid" not in first.task


def test_how2qa_csv_clip_window_around_the_span(tmp_path):
    first, zero, long, val = read_all(how2qa, csv_cfg(), tmp_path)[0]
    assert first.task["span"] == [10.5, 20.5]
    assert first.task["clip"] == [0.0, 60.0]  # centred at 15.5 would start before 0: shifted
    assert zero.task["span"] == [100.0, 100.0]  # a zero-length span is kept
    assert zero.task["clip"] == [70.0, 130.0]
    assert long.task["clip"] == [200.0, 300.0]  # a span longer than clip_seconds is the clip
    assert val.task["span"] == [30.0, 45.25]
    assert [(g.start, g.end, g.text) for g in zero.segments] == [(70.0, 130.0, zero.task["question"])]
    narrow = read_all(how2qa, csv_cfg(clip_seconds=10), tmp_path)[0]
    assert narrow[1].task["clip"] == [95.0, 105.0]
    assert how2qa.clip_window(2.0, 4.0, 60.0) == (0.0, 60.0)


def test_how2qa_csv_files_and_config(tmp_path):
    cfg = csv_cfg(splits={"how2QA_val_release": "test", "how2QA_test_release": "test"})
    assert how2qa.raw_inputs(cfg) == [str(HOW2QA / "how2QA_val_release.csv")]
    assert [(s.id, s.split) for s in read_all(how2qa, cfg, tmp_path)[0]] == [("how2QA_val_release-0", "test")]
    with pytest.raises(DataError, match="none of how2QA_train_release.csv, how2QA_val_release.csv, how2QA_test_public_release.csv found"):
        how2qa.raw_inputs(csv_cfg(annotations=str(tmp_path)))
    (tmp_path / "how2QA_train_release.csv").write_bytes(b"abc,[1:2],a,b,c,q,\xff\xfe\n")
    with pytest.raises(DataError, match="how2QA_train_release.csv:1: not UTF-8 text"):
        read_all(how2qa, csv_cfg(annotations=str(tmp_path)), tmp_path)
    with pytest.raises(ConfigError, match="config key 'how2qa.annotations' is required for --source how2qa"):
        how2qa.raw_inputs(how2qa.How2qaConfig())
    with pytest.raises(ConfigError, match="'how2qa.video_root' is required"):
        read_all(how2qa, csv_cfg(video_root=""), tmp_path)
    with pytest.raises(ConfigError, match="how2qa.clip_seconds"):
        csv_cfg(clip_seconds=0)
    with pytest.raises(ConfigError, match="how2qa.format"):
        from_dict(how2qa.How2qaConfig, {"format": "tsv"}, prefix="how2qa.")


# --- how2qa: HERO/VALUE JSON Lines ----------------------------------------------------------


def hero_cfg(**kwargs) -> how2qa.How2qaConfig:
    defaults = dict(
        format="hero",
        hero_files={str(HOW2QA / "hero_train.jsonl"): "train"},
        hero_mapping=str(HOW2QA / "hero_mapping.json"),
        hero_subtitles=str(HOW2QA / "hero_subtitles.jsonl"),
        video_root="/data/how2qa_segments",
    )
    return how2qa.How2qaConfig(**{**defaults, **kwargs})


def test_how2qa_hero_samples_and_rejections(tmp_path):
    samples, rejections = read_all(how2qa, hero_cfg(), tmp_path)
    assert [(s.id, s.split) for s in samples] == [("how2qa-train-0", "train"), ("17", "train")]
    assert dict(rejections.counts) == {
        "bad subtitle record": 2,  # an entry without text (its line's other entries kept), a non-object line
        "record is not a JSON object": 1,
        "missing field 'ts'": 1,
        "answer_idx out of range": 1,
        "answer_idx is not an integer": 1,
        "bad ts": 1,
        "span ends before it starts": 1,
        "vid_name not in mapping": 1,
        "bad mapped video name": 1,
        "empty question": 1,
        "empty answer": 1,
        "bad qid": 1,
    }
    assert rejections.examples["vid_name not in mapping"] == [f"{HOW2QA / 'hero_train.jsonl'}:9"]
    assert all(validation_error(s) is None for s in samples)


def test_how2qa_hero_fields_video_and_subtitles(tmp_path):
    first, second = read_all(how2qa, hero_cfg(), tmp_path)[0]
    assert first.video == "/data/how2qa_segments/abcdefghijk_60_120.mp4"
    assert first.task["span"] == [12.5, 20.0] and first.task["qid"] == "how2qa-train-0"
    assert correct(first) == "a pan"
    order, answer = shuffle_candidates(["a knife", "a pan", "a spoon", "a cup"], 1, key="how2qa-train-0")
    assert (first.task["candidates"], first.task["answer"]) == (order, answer)
    # The segment covers the 60 s segment file, named <ytid>_<start>_<end>.
    assert [(g.start, g.end, g.text) for g in first.segments] == [(0.0, 60.0, "What is he holding?")]
    # The first max_subtitles in time order (untimed last), times as floats.
    assert [s["text"] for s in first.task["subtitles"]] == ["one", "two", "three", "four", "five", "six"]
    assert first.task["subtitles"][2] == {"start": 6.0, "end": 9.0, "text": "three"}
    # An unparsable segment name gives an untimed segment; a zero-length ts is kept.
    assert second.video == "/data/how2qa_segments/oddname.mp4" and second.task["qid"] == 17
    assert [(g.start, g.end) for g in second.segments] == [(None, None)] and second.task["span"] == [5.0, 5.0]
    assert second.task["subtitles"] == [{"start": 0.0, "end": 1.0, "text": "kept"}]
    assert read_all(how2qa, hero_cfg(max_subtitles=0), tmp_path)[0][0].task["subtitles"] == []
    assert how2qa.segment_length("a_b_c_12.5_72.5") == 60.0 and how2qa.segment_length("a_10_5") is None


def test_how2qa_hero_without_subtitles_and_config(tmp_path):
    samples, rejections = read_all(how2qa, hero_cfg(hero_subtitles=""), tmp_path)
    assert [s.task["subtitles"] for s in samples] == [[], []] and "bad subtitle record" not in rejections.counts
    assert how2qa.raw_inputs(hero_cfg()) == [
        str(HOW2QA / "hero_train.jsonl"),
        str(HOW2QA / "hero_mapping.json"),
        str(HOW2QA / "hero_subtitles.jsonl"),
    ]
    with pytest.raises(ConfigError, match="'how2qa.hero_mapping' is required"):
        read_all(how2qa, hero_cfg(hero_mapping=""), tmp_path)
    with pytest.raises(ConfigError, match="'how2qa.hero_files' is required"):
        how2qa.raw_inputs(hero_cfg(hero_files={}))
    with pytest.raises(ConfigError, match="how2qa.hero_files"):
        hero_cfg(hero_files={"a.jsonl": "validation"})
    (tmp_path / "mapping.json").write_text('["1001"]')
    with pytest.raises(DataError, match="mapping.json: expected a JSON object"):
        read_all(how2qa, hero_cfg(hero_mapping=str(tmp_path / "mapping.json")), tmp_path)


# --- anet-qa --------------------------------------------------------------------------------


def anetqa_cfg(**kwargs) -> anetqa.AnetQaConfig:
    return anetqa.AnetQaConfig(**{"annotations": str(ANETQA), "video_root": "s3://bucket/anet", **kwargs})


def test_anetqa_samples_join_and_rejections(tmp_path):
    samples, rejections = read_all(anetqa, anetqa_cfg(), tmp_path)
    assert [(s.id, s.split) for s in samples] == [
        ("v_aaa_0", "train"),
        ("v_aaa_1", "train"),
        ("v_bbb_0", "train"),
        ("v_eee_0", "train"),
        ("v_fff_0", "train"),
        ("v_vvv_0", "val"),
        ("v_vvv_1", "val"),
    ]
    assert dict(rejections.counts) == {
        "duplicate question_id": 2,  # one in each file: the first is kept
        "missing field 'question'": 1,
        "bad video name": 1,
        "question is not a string": 1,
        "record is not a JSON object": 1,
        "answer is not a string": 1,
        "missing field 'answer'": 1,
        "type is not an integer": 1,
        "question_id is not a string": 1,
        "answer without a question": 1,
        "no answer": 1,
    }
    assert rejections.examples["no answer"] == [f"{ANETQA / 'train_q.json'}#3"]
    assert rejections.examples["answer without a question"] == [f"{ANETQA / 'train_a.json'}#2"]
    assert all(validation_error(s) is None for s in samples)


def test_anetqa_fields_vocabulary_and_labels(tmp_path):
    by_id = {s.id: s for s in read_all(anetqa, anetqa_cfg(), tmp_path)[0]}
    # Counted over train after strip().lower(); ties broken by the answer string.
    assert json.loads((tmp_path / "answers.json").read_text()) == ["yes", "cooking", "red", "tennis"]
    aaa0 = by_id["v_aaa_0"]
    assert aaa0.task == {"question": "what is the man doing", "answer": "cooking", "label": 1, "answer_type": 0}
    assert aaa0.video == "s3://bucket/anet/v_aaa.mp4" and aaa0.duration is None
    assert [(g.start, g.end, g.text) for g in aaa0.segments] == [(None, None, "what is the man doing")]
    assert by_id["v_eee_0"].task["answer"] == " Yes " and by_id["v_eee_0"].task["label"] == 0  # as annotated
    assert "answer_type" not in by_id["v_aaa_1"].task  # the answer gives no type
    assert by_id["v_vvv_0"].task["label"] == -1 and by_id["v_vvv_1"].task["label"] == 0

    small = {s.id: s for s in read_all(anetqa, anetqa_cfg(vocab_size=3, video_prefix="", video_ext=".mkv"), tmp_path)[0]}
    assert json.loads((tmp_path / "answers.json").read_text()) == ["yes", "cooking", "red"]
    assert small["v_fff_0"].task["label"] == -1 and small["v_fff_0"].split == "train"  # kept, label -1
    assert small["v_aaa_0"].video == "s3://bucket/anet/aaa.mkv"


def test_anetqa_joins_on_question_id_not_position(tmp_path):
    for name in ("train_q.json", "val_q.json", "val_a.json"):
        (tmp_path / name).write_text((ANETQA / name).read_text())
    answers = json.loads((ANETQA / "train_a.json").read_text())
    answers = [a for a in answers if a.get("answer") != "white"]  # without the duplicate, whose order decides
    (tmp_path / "train_a.json").write_text(json.dumps(answers[::-1]))
    reordered = read_all(anetqa, anetqa_cfg(annotations=str(tmp_path)), tmp_path / "reordered")[0]
    original = read_all(anetqa, anetqa_cfg(), tmp_path / "original")[0]
    assert [(s.id, s.task) for s in reordered] == [(s.id, s.task) for s in original]
    assert {s.id: s.task["answer"] for s in reordered}["v_bbb_0"] == "yes"


def test_anetqa_missing_files_and_config(tmp_path):
    with pytest.raises(DataError, match="no annotation pair maps to the train split"):
        read_all(anetqa, anetqa_cfg(splits={"val": "val"}), tmp_path)
    (tmp_path / "train_q.json").write_text("[]")
    with pytest.raises(DataError, match="train_a.json: not found, but its pair"):
        anetqa.raw_inputs(anetqa_cfg(annotations=str(tmp_path)))
    (tmp_path / "train_a.json").write_text('{"answer": "yes"}')
    with pytest.raises(DataError, match="train_a.json: expected a JSON list of answers"):
        read_all(anetqa, anetqa_cfg(annotations=str(tmp_path)), tmp_path)
    with pytest.raises(DataError, match="none of train_q.json"):
        anetqa.raw_inputs(anetqa_cfg(annotations=str(tmp_path / "missing")))
    assert anetqa.raw_inputs(anetqa_cfg(splits={"val": "test"})) == [str(ANETQA / "val_q.json"), str(ANETQA / "val_a.json")]
    with pytest.raises(ConfigError, match="config key 'anet_qa.annotations' is required for --source anet-qa"):
        anetqa.raw_inputs(anetqa.AnetQaConfig())
    with pytest.raises(ConfigError, match="'anet_qa.video_root' is required"):
        read_all(anetqa, anetqa_cfg(video_root=""), tmp_path)
    with pytest.raises(ConfigError, match="anet_qa.vocab_size"):
        anetqa_cfg(vocab_size=0)
    with pytest.raises(ConfigError, match="anet_qa.splits.val"):
        anetqa_cfg(splits={"val": "validation"})


# --- lfvila-jsonl ---------------------------------------------------------------------------


def lfvila_cfg(task: str, name: str, split: str = "train", **kwargs) -> lfvila_jsonl.LfvilaJsonlConfig:
    return lfvila_jsonl.LfvilaJsonlConfig(**{"task": task, "files": {str(LFVILA / name): split}, "video_root": "/data/clips", **kwargs})


def test_lfvila_jsonl_retrieval(tmp_path):
    samples, rejections = read_all(lfvila_jsonl, lfvila_cfg("retrieval", "retrieval.jsonl"), tmp_path)
    assert [s.id for s in samples] == ["v_abc", "v_def", "v_abc"]  # the repeat: "duplicate id" in the writer
    one, two, _ = samples
    assert one.video == "/data/clips/v_abc.mp4" and one.split == "train" and one.task == {}
    assert [(g.start, g.end, g.text) for g in one.segments] == [(None, None, "A man cooks.")]
    assert [(g.start, g.end, g.text) for g in two.segments] == [(None, None, "First he chops."), (None, None, "Then he fries.")]
    assert dict(rejections.counts) == {
        "empty text list": 1,
        "sentence is not a string": 1,
        "missing field 'text'": 1,
        "bad clip_id": 1,
        "text is not a string or a list": 1,
        "record is not a JSON object": 1,
    }
    assert rejections.examples["empty text list"] == [f"{LFVILA / 'retrieval.jsonl'}:3"]
    assert not (tmp_path / "answers.json").exists()


def test_lfvila_jsonl_how2qa(tmp_path):
    samples, rejections = read_all(lfvila_jsonl, lfvila_cfg("how2qa", "how2qa_train.jsonl", "val"), tmp_path)
    assert [s.id for s in samples] == ["how2qa_train-1", "how2qa_train-2", "how2qa_train-3", "how2qa_train-13"]
    first, nan, nan_pair, bare = samples
    assert first.video == "/data/clips/abcdefghijk_60_120.mp4" and first.split == "val"
    assert first.task["span"] == [3.5, 9.0] and correct(first) == "a spoon"
    order, answer = shuffle_candidates(["a knife", "a pan", "a spoon", "a cup"], 2, key="how2qa_train:1")
    assert (first.task["candidates"], first.task["answer"]) == (order, answer)
    assert first.task["subtitles"] == [{"start": 0.5, "end": 2.0, "text": "hello there"}, {"start": None, "end": None, "text": "no times"}]
    assert [(g.start, g.end, g.text) for g in first.segments] == [(None, None, "What is he holding?")]
    assert nan.task["span"] is None and nan_pair.task["span"] is None  # NaN: the whole clip
    assert bare.task["span"] is None and bare.task["subtitles"] == [] and correct(bare) == "b"
    assert "clip" not in first.task
    assert dict(rejections.counts) == {
        "span ends before it starts": 1,
        "bad span": 1,
        "text_a is not 4 strings": 1,
        "answer_idx out of range": 1,
        "answer_idx is not an integer": 1,
        "empty question": 1,
        "empty answer": 1,
        "bad text_s": 1,
        "missing field 'answer_idx'": 1,
    }
    assert all(validation_error(s) is None for s in samples)
    assert not any(isinstance(v, float) and math.isnan(v) for s in samples for v in (s.task["span"] or []))


def test_lfvila_jsonl_violin(tmp_path):
    samples, rejections = read_all(lfvila_jsonl, lfvila_cfg("violin", "violin_test.jsonl", "test"), tmp_path)
    assert [s.id for s in samples] == ["violin_test-1", "violin_test-2"]
    true, false = samples
    assert true.task == {"statement": "The man is happy.", "label": 1, "subtitles": [{"start": 1.0, "end": 2.5, "text": "Great news!"}]}
    assert false.task == {"statement": "The woman leaves.", "label": 0, "subtitles": []}
    assert true.video == "/data/clips/friends_s01e01_seg01_clip_00.mp4"
    assert [(g.start, g.end, g.text) for g in false.segments] == [(None, None, "The woman leaves.")]
    assert dict(rejections.counts) == {"answer is not 0 or 1": 2, "empty statement": 1, "bad text_s": 1}
    assert all(validation_error(s) is None for s in samples)


def test_lfvila_jsonl_anetqa_with_and_without_vocabulary(tmp_path):
    cfg = lfvila_cfg("anet-qa", "anetqa_val.jsonl", "val", answers=str(LFVILA / "answers.json"))
    samples, rejections = read_all(lfvila_jsonl, cfg, tmp_path / "known")
    assert json.loads((tmp_path / "known" / "answers.json").read_text()) == ["cooking", "yes", "no"]
    assert [(s.id, s.task["label"], s.task["answer"]) for s in samples] == [("anetqa_val-1", 0, "cooking"), ("anetqa_val-2", 2, "no")]
    assert samples[0].video == "/data/clips/v_abc.mp4" and samples[0].task["question"] == "what is he doing"
    assert dict(rejections.counts) == {
        "answer outside the vocabulary": 1,
        "answer is not a class index": 2,
        "empty question": 1,
        "bad video_name": 1,
    }
    assert lfvila_jsonl.raw_inputs(cfg) == [str(LFVILA / "anetqa_val.jsonl"), str(LFVILA / "answers.json")]

    samples, rejections = read_all(lfvila_jsonl, lfvila_cfg("anet-qa", "anetqa_val.jsonl", "val"), tmp_path / "unknown")
    assert [(s.task["label"], s.task["answer"]) for s in samples] == [(0, "0"), (2, "2"), (5, "5")]
    assert json.loads((tmp_path / "unknown" / "answers.json").read_text()) == ["0", "1", "2", "3", "4", "5"]
    assert "answer outside the vocabulary" not in rejections.counts
    assert all(validation_error(s) is None for s in samples)


def test_lfvila_jsonl_files_and_config(tmp_path):
    assert lfvila_jsonl.file_stem("/x/how2qa_train.jsonl.gz") == "how2qa_train"
    assert lfvila_jsonl.file_stem("s3://b/val.v2.jsonl") == "val.v2"
    with pytest.raises(ConfigError, match="config key 'lfvila_jsonl.task' is required for --source lfvila-jsonl: one of retrieval, how2qa, violin, anet-qa"):
        lfvila_jsonl.raw_inputs(lfvila_jsonl.LfvilaJsonlConfig(files={"a.jsonl": "train"}))
    with pytest.raises(ConfigError, match=r"'lfvila_jsonl.task': expected one of \['retrieval', 'how2qa', 'violin', 'anet-qa'\]"):
        lfvila_jsonl.LfvilaJsonlConfig(task="qa")
    with pytest.raises(ConfigError, match="'lfvila_jsonl.files' is required"):
        read_all(lfvila_jsonl, lfvila_jsonl.LfvilaJsonlConfig(task="violin"), tmp_path)
    with pytest.raises(ConfigError, match="'lfvila_jsonl.video_root' is required"):
        read_all(lfvila_jsonl, lfvila_cfg("violin", "violin_test.jsonl", video_root=""), tmp_path)
    with pytest.raises(ConfigError, match="lfvila_jsonl.answers"):
        lfvila_cfg("how2qa", "how2qa_train.jsonl", answers="answers.json")
    with pytest.raises(ConfigError, match="lfvila_jsonl.files"):
        lfvila_cfg("violin", "violin_test.jsonl", split="dev")
    (tmp_path / "vocab.json").write_text('{"0": "yes"}')
    with pytest.raises(DataError, match="vocab.json: expected a JSON list of answer strings"):
        read_all(lfvila_jsonl, lfvila_cfg("anet-qa", "anetqa_val.jsonl", answers=str(tmp_path / "vocab.json")), tmp_path)
    (tmp_path / "broken.jsonl").write_text('{"clip_id": "a", "text": "x"}\n{"clip_id": \n')
    broken = lfvila_jsonl.LfvilaJsonlConfig(task="retrieval", files={str(tmp_path / "broken.jsonl"): "train"}, video_root="/v")
    with pytest.raises(DataError, match="broken.jsonl:2: invalid JSON"):
        read_all(lfvila_jsonl, broken, tmp_path)


# --- through the prepare stage --------------------------------------------------------------


def test_prepare_hyphenated_sources_and_their_keys(tmp_path):
    cfg = resolve(PrepareConfig, overrides=["source=anet-qa", f"anet_qa.annotations={ANETQA}", "anet_qa.video_root=/videos"])
    assert cfg.source_config() is cfg.anet_qa
    assert set(key_config(cfg)) == {"source", "anet_qa"} and key_config(cfg)["anet_qa"]["annotations"] == str(ANETQA)
    summary = prepare(cfg, tmp_path / "anet")
    assert summary["samples"] == 7 and summary["splits"] == {"train": 5, "val": 2, "test": 0}
    assert json.loads((tmp_path / "anet" / "answers.json").read_text())[0] == "yes"
    records = list(read_corpus(tmp_path / "anet" / "samples.jsonl"))
    assert records[0].task["label"] == 1 and records[0].segments[0].start is None
    assert key_config(PrepareConfig(source="how2qa")) == {"source": "how2qa", "how2qa": key_config(PrepareConfig(source="how2qa"))["how2qa"]}

    retrieval = PrepareConfig(source="lfvila-jsonl", lfvila_jsonl=lfvila_cfg("retrieval", "retrieval.jsonl"))
    assert set(key_config(retrieval)) == {"source", "lfvila_jsonl"}
    summary = prepare(retrieval, tmp_path / "retrieval")
    assert summary["samples"] == 2 and summary["rejected"] == 7  # 6 by the reader, the repeated clip_id by the writer
    stats = json.loads((tmp_path / "retrieval" / "stats.json").read_text())
    assert stats["rejected"]["by_reason"]["duplicate id"] == 1

    how2 = PrepareConfig(source="how2qa", how2qa=csv_cfg())
    assert prepare(how2, tmp_path / "how2qa")["samples"] == 4
    with pytest.raises(ConfigError, match="config key 'source': expected one of"):
        from_dict(PrepareConfig, {"source": "anet_qa"})
