"""benchmarks/bench_event_probe.py labels each clip with the event its sentence narrates, and
splits a clip's frames into the features its linear probe reads."""

import sys
from pathlib import Path

import torch

from lfvila_cli.data import example
from lfvila_cli.data.corpus import Segment
from lfvila_cli.data.example import ExampleConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_event_probe  # noqa: E402


def test_every_sentence_of_the_example_gets_its_own_event_kind():
    plans = example.plan_videos(ExampleConfig(train_videos=60, val_videos=0, test_videos=0))
    seen = set()
    for plan in plans:
        for sentence, event in zip(plan.sentences(), plan.events):
            kind = bench_event_probe.KINDS[bench_event_probe.event_kind(sentence)]
            assert kind == event.kind, sentence
            seen.add((event.kind, event.wording))
    # every kind in every wording reached over 60 videos
    assert seen == {(kind, w) for kind, wordings in example.PHRASES.items() for w in range(len(wordings))}
    # A candidate (no colour before the shape) reads the same way.
    assert bench_event_probe.KINDS[bench_event_probe.event_kind("the circle becomes purple.")] == "turn"


def test_clip_features_split_each_clip_in_halves_and_skip_short_clips():
    features = torch.arange(10, dtype=torch.float32)[:, None].repeat(1, 2)  # frame t -> (t, t)
    times = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.1, 5.0])
    segments = [
        Segment(0.0, 2.0, "the red circle grows."),
        Segment(2.0, 4.0, "the red circle moves left."),
        Segment(4.0, 4.5, "the red circle shrinks."),  # one frame: skipped
    ]
    rows = bench_event_probe.clip_features(features, times, segments)
    assert [kind for _, kind in rows] == [bench_event_probe.KINDS.index("grow"), bench_event_probe.KINDS.index("move-left")]
    first, _ = rows[0]  # frames 0, 1 | 2, 3
    assert first.tolist() == [0.5, 0.5, 2.5, 2.5, 2.0, 2.0]
