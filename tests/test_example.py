"""The bundled synthetic dataset: real decodable videos, visible events, hard negatives, QA, determinism."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import decord
import numpy as np
import pytest

from lfvila_cli.config import from_dict
from lfvila_cli.data import example
from lfvila_cli.data.corpus import Rejections, Sample, read_corpus, validation_error
from lfvila_cli.data.example import ExampleConfig
from lfvila_cli.errors import ConfigError

# Tiny but not degenerate: 4 frames per clip, 64×96 frames, every split present.
TINY = ExampleConfig(
    seed=3, train_videos=2, val_videos=2, test_videos=1, min_clips=4, max_clips=6,
    clip_seconds=1.0, fps=4, height=64, width=96, qa_per_video=3,
)


def _generate(cfg: ExampleConfig, out: Path) -> list[Sample]:
    return list(example.read(cfg, out, Rejections()))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[Sample]]:
    out = tmp_path_factory.mktemp("example")
    return out, _generate(TINY, out)


def _decode(path: Path) -> np.ndarray:
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy()  # (T, H, W, 3)


def _object_mask(frame: np.ndarray, background: tuple[int, int, int], threshold: float = 60.0) -> np.ndarray:
    """Pixels clearly away from the plain background colour: the shape. (H, W) bool."""
    return np.abs(frame.astype(np.float32) - np.asarray(background, np.float32)).sum(-1) > threshold


# Screen directions (x right, y down), spelled out here rather than read from the module under test.
DIRECTIONS = {"move-left": (-1, 0), "move-right": (1, 0), "move-up": (0, -1), "move-down": (0, 1)}


def _by_id(samples):
    return {s.id: s for s in samples}


# ----------------------------------------------------------------------------- videos


def test_samples_are_valid_and_videos_decode_to_the_clip_grid(corpus):
    out, samples = corpus
    assert [s.split for s in samples].count("train") == TINY.train_videos
    assert len(samples) == TINY.train_videos + 2 * (TINY.val_videos + TINY.test_videos)
    for sample in samples:
        assert validation_error(sample, min_segments=4) is None, sample.id
        n = len(sample.segments)
        assert TINY.min_clips <= n <= TINY.max_clips
        assert sample.video == f"videos/{sample.id}.mp4"
        assert sample.duration == n * TINY.clip_seconds
        assert [(seg.start, seg.end) for seg in sample.segments] == [(float(i), float(i + 1)) for i in range(n)]
        reader = decord.VideoReader(str(out / sample.video))
        assert len(reader) == n * TINY.frames_per_clip
        assert reader[0].shape == (TINY.height, TINY.width, 3)
        assert reader.get_avg_fps() == pytest.approx(TINY.fps)
    counts = json.loads((out / "example.json").read_text())
    assert counts == {
        "how2qa": len(samples) * TINY.qa_per_video,
        "violin": len(samples) * 2 * TINY.qa_per_video,
        "videos": len(samples),
    }


def test_decoded_clips_show_their_event(corpus):
    """After H.264 round trip, every event is visible between the first and last frame of its clip."""
    out, samples = corpus
    plans = {plan.id: plan for plan in example.plan_videos(TINY)}
    k = TINY.frames_per_clip
    checked = Counter()
    for sample in samples:
        plan = plans[sample.id]
        frames = _decode(out / sample.video)
        for i, event in enumerate(plan.events):
            first, last = frames[i * k], frames[(i + 1) * k - 1]
            a, b = _object_mask(first, plan.background), _object_mask(last, plan.background)
            assert a.sum() > 10 and b.sum() > 10, (sample.id, i)
            if event.kind in DIRECTIONS:
                sx, sy = DIRECTIONS[event.kind]
                shift_x = np.nonzero(b)[1].mean() - np.nonzero(a)[1].mean()
                shift_y = np.nonzero(b)[0].mean() - np.nonzero(a)[0].mean()
                # The centroid travels most of a step in the named direction.
                assert sx * shift_x + sy * shift_y > 0.6 * (abs(sx) * plan.step[0] + abs(sy) * plan.step[1]), (sample.id, i)
            elif event.kind in ("grow", "shrink"):
                ratio = b.sum() / a.sum()
                assert (ratio > 1.5) if event.kind == "grow" else (ratio < 1 / 1.5), (sample.id, i, ratio)
            elif event.kind == "turn":
                target = np.asarray(example.COLOURS[event.colour], float)
                core = b & _object_mask(last, plan.background, threshold=150)
                seen = last[core].astype(float).mean(0)
                assert np.abs(seen - target).max() < 40, (sample.id, i, seen, target)
                before = first[a].astype(float).mean(0)
                assert np.abs(before - target).max() > 60, (sample.id, i)
            checked[event.kind] += 1
    assert {"grow", "shrink", "turn"} <= set(checked) and set(DIRECTIONS) & set(checked)


def test_every_event_kind_changes_the_frames():
    """Over many videos (rendered, not encoded), each kind visibly changes its clip; spins turn polygons."""
    cfg = replace(TINY, train_videos=12, val_videos=0, test_videos=0)
    k = cfg.frames_per_clip
    seen = set()
    for plan in example.plan_videos(cfg):
        frames = example.render_video(plan, cfg)
        assert frames.shape == (len(plan.events) * k, cfg.height, cfg.width, 3) and frames.dtype == np.uint8
        for i, event in enumerate(plan.events):
            start = frames[i * k - 1] if i else frames[0]  # the state the clip starts from
            middle = frames[i * k + k // 2 - 1]
            a, m = _object_mask(start, plan.background), _object_mask(middle, plan.background)
            if event.kind == "spin":
                assert plan.shape != "circle"
                overlap = (a & m).sum() / (a | m).sum()
                assert overlap < 0.9, (plan.id, i, overlap)  # rotated, not just re-drawn
            else:
                assert np.abs(start.astype(int) - middle.astype(int)).max() > 30, (plan.id, i, event.kind)
            seen.add(event.kind)
    assert seen == set(example.PHRASES)


def test_polygon_rasteriser_matches_point_in_polygon_reference():
    """The half-plane signed distance agrees with a cross-product point-in-polygon test."""
    cfg = replace(TINY, train_videos=12, val_videos=0, test_videos=0)
    checked = 0
    for plan in example.plan_videos(cfg):
        if plan.shape == "circle":
            continue
        tracks = example._tracks(plan, cfg.frames_per_clip)
        distance = example._signed_distance(plan.shape, tracks, cfg.height, cfg.width)  # (T, H, W)
        sides = example.SHAPE_SIDES[plan.shape]
        ys, xs = np.mgrid[0 : cfg.height, 0 : cfg.width] + 0.5
        for t in range(0, len(distance), 5):
            radius = tracks["size"][t] * example.SHAPE_EXTENT[plan.shape]
            angles = np.deg2rad(tracks["angle"][t] - 90.0 + 360.0 * np.arange(sides) / sides)
            vx, vy = tracks["x"][t] + radius * np.cos(angles), tracks["y"][t] + radius * np.sin(angles)
            inside = np.ones_like(xs, bool)
            for j in range(sides):
                ex, ey = vx[(j + 1) % sides] - vx[j], vy[(j + 1) % sides] - vy[j]
                inside &= ex * (ys - vy[j]) - ey * (xs - vx[j]) >= 0  # left of every edge (y down: clockwise order)
            clear = np.abs(distance[t]) > 0.5  # boundary pixels are anti-aliased either way
            assert inside.sum() > 10
            assert np.array_equal((distance[t] < 0)[clear], inside[clear]), (plan.id, t)
            checked += 1
    assert checked > 0


# ----------------------------------------------------------------------------- determinism


def test_same_config_gives_identical_records_and_frames(corpus, tmp_path):
    out, samples = corpus
    again = _generate(TINY, tmp_path)
    assert [s.to_json() for s in again] == [s.to_json() for s in samples]
    for name in ("how2qa.jsonl", "violin.jsonl", "example.json"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name
    for sample in samples:
        assert np.array_equal(_decode(tmp_path / sample.video), _decode(out / sample.video)), sample.id


def test_different_seed_gives_different_data():
    plans = example.plan_videos(TINY)
    other = example.plan_videos(replace(TINY, seed=TINY.seed + 1))
    assert [p.sentences() for p in plans] != [p.sentences() for p in other]
    assert not np.array_equal(example.render_video(plans[0], TINY), example.render_video(other[0], TINY))


def test_val_and_test_do_not_depend_on_the_number_of_train_videos():
    few = [p for p in example.plan_videos(TINY) if p.split != "train"]
    many = [p for p in example.plan_videos(replace(TINY, train_videos=7)) if p.split != "train"]
    assert [(p.id, p.sentences(), p.start) for p in few] == [(p.id, p.sentences(), p.start) for p in many]


# ----------------------------------------------------------------------------- hard negatives


def test_val_and_test_videos_have_reordered_twins(corpus):
    out, samples = corpus
    by_id = _by_id(samples)
    bases = [s for s in samples if s.split in ("val", "test") and not s.id.endswith("-reordered")]
    assert len(bases) == TINY.val_videos + TINY.test_videos
    for base in bases:
        twin = by_id[f"{base.id}-reordered"]
        assert twin.split == base.split
        assert base.task["group"] == twin.task["group"] == base.id
        assert base.task["hard_negative_of"] == twin.id and twin.task["hard_negative_of"] == base.id
        assert Counter(base.task["events"]) == Counter(twin.task["events"])
        assert base.task["events"] != twin.task["events"]
        assert base.paragraph != twin.paragraph
        assert base.duration == twin.duration
        assert not np.array_equal(_decode(out / base.video), _decode(out / twin.video))
    for sample in samples:
        if sample.split == "train":
            assert "group" not in sample.task and "hard_negative_of" not in sample.task
        assert len(set(sample.task["events"])) == len(sample.task["events"])  # distinct events


def test_twin_starts_from_the_same_state_and_carries_it_over():
    for plan in example.plan_videos(TINY):
        states = plan.states()
        assert len(states) == len(plan.events) + 1
        for state, event, text in zip(states, plan.events, plan.sentences()):
            assert text == f"the {state.colour} {plan.shape} {event.phrase}."
            if event.kind == "turn":
                assert event.colour != state.colour  # every recolour is a real change, in any order
        for state in states:  # every order stays inside the frame
            reach = state.size * example.SHAPE_EXTENT[plan.shape]
            assert reach - 0.5 <= state.x <= TINY.width - reach + 0.5
            assert reach - 0.5 <= state.y <= TINY.height - reach + 0.5


def test_default_size_objects_stay_in_the_frame_in_every_video():
    # The default objects are large (colour and shape must survive a 64×96 cache): a shape that
    # grows and travels both ways shrinks to fit, so no video ever pushes it off the frame.
    cfg = ExampleConfig(train_videos=300)
    for plan in example.plan_videos(cfg):
        for state in plan.states():
            reach = state.size * example.SHAPE_EXTENT[plan.shape]
            assert reach <= state.x <= cfg.width - reach and reach <= state.y <= cfg.height - reach, plan.id


# ----------------------------------------------------------------------------- QA


def test_how2qa_answers_are_the_neighbouring_clip(corpus):
    out, samples = corpus
    by_id = _by_id(samples)
    items = list(read_corpus(out / "how2qa.jsonl"))
    assert len(items) == len(samples) * TINY.qa_per_video
    answers = Counter()
    for item in items:
        source = by_id[item.id.rsplit("-how2qa", 1)[0]]
        assert item.video == source.video and item.split == source.split
        assert [seg.to_json() for seg in item.segments] == [seg.to_json() for seg in source.segments]
        candidates, answer = item.task["candidates"], item.task["answer"]
        assert len(candidates) == 4 and len(set(candidates)) == 4
        assert answer in range(4)
        assert item.task["subtitles"] == []
        texts = [seg.text for seg in item.segments]
        clip = [i for i, seg in enumerate(item.segments) if [seg.start, seg.end] == item.task["span"]]
        assert len(clip) == 1
        # Candidates name the object by its shape only; the answer is the clip's event.
        shape = next(word for word in texts[0].split() if word in example.SHAPES)
        assert all(c.startswith(f"the {shape} ") for c in candidates)
        phrases = [example.event_phrase(text) for text in texts]
        assert example.event_phrase(candidates[answer]) == phrases[clip[0]]
        # The question names the neighbouring clip's event: before → the next clip, after → the previous.
        question = item.task["question"]
        anchor = clip[0] + (1 if " before " in question else -1)
        assert 0 <= anchor < len(texts)
        assert question.endswith(f" {phrases[anchor]}?"), (question, texts[anchor])
        assert phrases[anchor] not in {example.event_phrase(c) for c in candidates}
        # One distractor from the same video (not the anchor), then two events that never happen,
        # as many as the video leaves (its events are distinct slots of EVENT_SLOTS).
        left = sum(not (shape == "circle" and slot == "spin") for slot in example.EVENT_SLOTS) - len(texts)
        absent = sum(example.event_phrase(c) not in phrases for c in candidates)
        assert absent == min(2, left), (candidates, texts)
        answers[answer] += 1
    assert len(answers) > 1  # the answer position is shuffled


def _text_only_accuracy(train: list[Sample], test: list[Sample], feature) -> float:
    """Accuracy on ``test`` of a reader of the text alone: each candidate scores the smoothed rate at
    which candidates with its ``feature(question, candidate)`` were the answer in ``train``; ties
    are broken at random."""
    seen, right = Counter(), Counter()
    for item in train:
        for i, candidate in enumerate(item.task["candidates"]):
            key = feature(item.task["question"], candidate)
            seen[key] += 1
            right[key] += i == item.task["answer"]
    rng = np.random.default_rng(0)
    correct = 0
    for item in test:
        scores = [(right[k] + 1) / (seen[k] + 4) for k in (feature(item.task["question"], c) for c in item.task["candidates"])]
        best = [i for i, score in enumerate(scores) if score == max(scores)]
        correct += int(rng.choice(best)) == item.task["answer"]
    return correct / len(test)


def test_how2qa_text_alone_is_at_chance_and_presence_below_half():
    # Planned only (nothing rendered): 400 training videos, 60 test videos and their twins.
    cfg = ExampleConfig(train_videos=400, val_videos=0, test_videos=60, qa_per_video=6)
    items = [item for plan in example.plan_videos(cfg) for item in example.how2qa_items(plan, cfg)]
    train, test = [i for i in items if i.split == "train"], [i for i in items if i.split == "test"]
    relation = lambda question: " after " in question  # noqa: E731
    readers = {
        "the candidate's words": lambda q, c: example.event_phrase(c),
        "the candidate's kind of event, the question's and the relation": lambda q, c: (
            example.event_phrase(c).split()[0], example.event_phrase(q).split()[0], relation(q)
        ),
        "the candidate's colour words against the question's": lambda q, c: (
            relation(q), tuple(w for w in c.rstrip(".").split() if w in example.COLOURS) == tuple(w for w in q.split() if w in example.COLOURS)
        ),
    }
    # 720 test questions: one reader's accuracy at chance has a sampling sd of 0.016. (Before the
    # absent events were drawn as the video's own, the candidate's words alone read 0.53.)
    for name, feature in readers.items():
        assert _text_only_accuracy(train, test, feature) < 0.25 + 3 * 0.016, name
    assert 0.40 < example.presence_accuracy(test) < 0.5


def test_violin_statements_are_balanced_and_true_to_the_order(corpus):
    out, samples = corpus
    items = list(read_corpus(out / "violin.jsonl"))
    labels = [item.task["label"] for item in items]
    assert len(items) == len(samples) * 2 * TINY.qa_per_video
    assert labels.count(1) == labels.count(0) == len(items) // 2
    for item in items:
        texts = [seg.text for seg in item.segments]
        statement = item.task["statement"]
        body = statement.rstrip(".").split(" ", 2)[2]  # drop "the <shape>"
        if " before it " in body:
            earlier, later = body.split(" before it ")
        else:
            later, earlier = body.split(" after it ")
        position = {}
        for phrase in (earlier, later):
            (position[phrase],) = [i for i, text in enumerate(texts) if text.endswith(f" {phrase}.")]
        assert item.task["label"] == int(position[earlier] < position[later]), statement


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "change, key",
    [
        ({"min_clips": 6, "max_clips": 5}, "example.max_clips"),
        ({"min_clips": 3}, "example.min_clips"),
        ({"max_clips": 9}, "example.max_clips"),
        ({"height": 111}, "example.height"),
        ({"width": 30}, "example.width"),
        ({"clip_seconds": 0.3}, "example.clip_seconds"),  # 2.4 frames per clip at 8 fps
        ({"qa_per_video": 7}, "example.qa_per_video"),
        ({"val_videos": -1}, "example.val_videos"),
        ({"train_videos": 0, "val_videos": 0, "test_videos": 0}, "example.train_videos"),
    ],
)
def test_invalid_config_names_the_key(change, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        from_dict(ExampleConfig, change)


def test_defaults_are_small_and_valid():
    cfg = ExampleConfig()
    assert (cfg.height, cfg.width, cfg.frames_per_clip) == (128, 192, 16)
    assert example.raw_inputs(cfg) == []
    assert len(example.plan_videos(cfg)) == 24 + 2 * (6 + 6)


def test_boxed_renderer_equals_the_whole_frame_reference():
    """render_video computes the object's distance in a box around it; every shape, every event
    (objects near the frame's edges included) gives the reference's frames bit for bit."""
    cfg = replace(TINY, train_videos=16, val_videos=2, test_videos=2)
    shapes = set()
    for plan in example.plan_videos(cfg):
        assert np.array_equal(example.render_video(plan, cfg), example.render_video_reference(plan, cfg)), plan.id
        shapes.add(plan.shape)
    assert shapes == set(example.SHAPE_EXTENT)
