"""The bundled synthetic long-form dataset: seeded, rendered with numpy, no downloads.

Each video is ``M`` (4–8) consecutive clips; in every clip ONE event happens to a single
coloured shape on a plain background: it moves left/right/up/down, grows, shrinks, spins, or
turns another colour. The object's state (position, size, colour, angle) carries over from
clip to clip, so the video is continuous, and each clip is narrated by one sentence that names
the object as it looks at that moment ("the red circle grows."). That is exactly the
long-form shape of docs/method.md §1: sentence ``i`` belongs to clip ``i``, in temporal order.

Why these choices:

* Events are **distinct within a video** (each kind at most once, colour targets all
  different and different from the starting colour). Then "what happens after X?" has one
  answer, and *every* order of a video's events is renderable: a move never leaves the frame
  and a recolour never targets the colour the object already has, whatever came before.
* val/test hold **temporal hard negatives**: each base video ``val-0003`` has a twin
  ``val-0003-reordered`` with the same events in another order (rendered anew, sentences
  regenerated with the same wording). Both share ``group`` and point at each other with
  ``hard_negative_of``, so only a model that understands order tells them apart.
* Motion is eased (smoothstep) so the object rests at clip boundaries: clips are visibly
  separate even at 8 frames per clip and low resolution.
* Every video draws from its own generator keyed by ``(seed, split, index)``: changing
  ``train_videos`` does not change the val or test videos.

Task files written next to the corpus (same record shape as ``samples.jsonl``):

* ``how2qa.jsonl`` — How2QA-shaped multiple choice: ``question`` ("What happens after the
  circle grows?"), 4 ``candidates`` (the neighbouring clip's event, "the circle moves left.";
  distractors: one other event of the same video, then events that do not occur there, drawn as
  the video's own events are), ``answer`` (0–3), ``span`` (the answer clip, seconds),
  ``subtitles`` (empty). ``qa_per_video`` items per long-form video (twins included). The mix
  grades what a model understands: text alone is at chance (25%: every candidate is a plausible
  event, and the object is named by its shape only, since its colour changes with the story),
  telling the events that occur from those that do not reaches ``presence_accuracy`` (0.44 on
  the quickstart's sizes: 50% where a video leaves two absent events, less where it has 7 or 8
  events and distractors come from its own clips), and only the order of events gives 100%.
  (With all three distractors from the same video, the tiny preset fine-tuned on the
  quickstart's 384 items stayed at chance on validation.)
* ``violin.jsonl`` — VIOLIN-shaped entailment: ``statement`` ("the circle grows before it
  spins.") and ``label`` (1 true, 0 false). ``qa_per_video`` *pairs* per video; the false
  statement of a pair is the true one with the two events swapped, so labels are exactly
  balanced and the text alone cannot decide.
* ``example.json`` — counts ``{"how2qa", "violin", "videos"}``.

With ``example.task`` set to ``how2qa`` or ``violin``, ``samples.jsonl`` itself holds those items
(the corpus that ``finetune --task how2qa|violin`` reads); the default ``long-form`` holds the
long-form samples.

QA records carry their video's segments (for frame caching); those texts narrate the events,
so a QA model must read ``question``/``statement`` and ``subtitles``, never the segment texts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from ..config import check
from .corpus import Rejections, Sample, Segment, write_corpus
from .video import write_video

log = logging.getLogger(__name__)

SPLIT_INDEX = {"train": 0, "val": 1, "test": 2}
TASKS = ("long-form", "how2qa", "violin")
# Independent random streams per video, so e.g. asking for more QA items leaves the videos alone.
_PLAN, _REORDER, _HOW2QA, _VIOLIN = range(4)
# The paragraph encoder's sentence-index embedding holds at most 8 segments (docs/method.md §3).
MAX_CLIPS = 8
SAME_VIDEO_DISTRACTORS = 1  # How2QA-shaped items: the other distractors are events that never happen

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 45, 45),
    "green": (40, 190, 70),
    "blue": (50, 105, 240),
    "yellow": (240, 220, 40),
    "purple": (160, 70, 215),
    "orange": (250, 140, 30),
}
# Dark, neutral backgrounds: every object colour stands out on every one of them.
BACKGROUNDS: tuple[tuple[int, int, int], ...] = ((18, 18, 22), (55, 55, 60), (20, 30, 55), (45, 35, 28))
SHAPES = ("circle", "square", "triangle")
# Circumradius of a polygon relative to the object's size, so the three shapes look about equally big.
SHAPE_EXTENT = {"circle": 1.0, "square": 1.25, "triangle": 1.4}
SHAPE_SIDES = {"square": 4, "triangle": 3}

GROW, SHRINK = 1.6, 1 / 1.6  # size factors
SPIN_DEGREES = 90.0
# Object size as a fraction of min(H, W): big enough that colour and shape survive a 64×96 cache
# (about a 9–11 pixel radius there), shrunk where needed so every event order stays in the frame.
SIZE_FRACTION = (0.14, 0.17)
STEP_FRACTION = 0.22  # a move covers this fraction of the frame's width (left/right) or height (up/down)

# One slot per possible event of a video; a video's events are a random subset, so none repeats.
EVENT_SLOTS = ("move-left", "move-right", "move-up", "move-down", "grow", "shrink", "spin", "turn", "turn")

# Verb phrases, a few wordings each. The wording is drawn once per event and kept by the
# reordered twin, so the twin's paragraph differs by order (and colour names) only.
PHRASES: dict[str, tuple[str, ...]] = {
    "move-left": ("moves to the left", "slides to the left", "moves left"),
    "move-right": ("moves to the right", "slides to the right", "moves right"),
    "move-up": ("moves up", "slides upward", "rises"),
    "move-down": ("moves down", "slides downward", "drops down"),
    "grow": ("grows", "gets bigger", "becomes larger"),
    "shrink": ("shrinks", "gets smaller", "becomes smaller"),
    "spin": ("spins", "rotates", "spins around"),
    "turn": ("turns {colour}", "changes colour to {colour}", "becomes {colour}"),
}
WORDINGS = 3  # every kind above has this many
MOVES = {"move-left": (-1, 0), "move-right": (1, 0), "move-up": (0, -1), "move-down": (0, 1)}


@dataclass
class ExampleConfig:
    """Sizes of the synthetic dataset. Defaults keep prepare + cache + a tiny pretrain in minutes on 2 CPUs.

    ``val_videos``/``test_videos`` count *base* videos: each also gets a reordered twin.
    ``qa_per_video``: How2QA questions per long-form video, and VIOLIN true/false statement
    pairs per long-form video (so 2·qa_per_video VIOLIN items), twins included.
    """

    seed: int = 0
    train_videos: int = 24
    val_videos: int = 6
    test_videos: int = 6
    min_clips: int = 4
    max_clips: int = 8
    clip_seconds: float = 2.0
    fps: int = 8
    height: int = 128  # 3:2, as the 64×96 cache of lfvila-tiny: nothing is cropped away
    width: int = 192
    qa_per_video: int = 2
    # What samples.jsonl holds: the long-form samples (pre-training, retrieval), or the How2QA- /
    # VIOLIN-shaped items (the same videos), for `lfvila finetune --task how2qa|violin`.
    task: str = "long-form"

    def __post_init__(self) -> None:
        check(self.task in TASKS, "example.task", f"expected one of {', '.join(TASKS)}, got {self.task!r}")
        check(self.seed >= 0, "example.seed", f"must be >= 0, got {self.seed}")
        for name in ("train_videos", "val_videos", "test_videos"):
            check(getattr(self, name) >= 0, f"example.{name}", f"must be >= 0, got {getattr(self, name)}")
        check(
            self.train_videos + self.val_videos + self.test_videos > 0,
            "example.train_videos",
            "the dataset would be empty (train, val and test videos are all 0)",
        )
        check(self.min_clips >= 4, "example.min_clips", f"long-form samples keep runs of at least 4 clips (docs/method.md §1), got {self.min_clips}")
        check(
            self.max_clips >= self.min_clips,
            "example.max_clips",
            f"must be >= example.min_clips ({self.min_clips}), got {self.max_clips}",
        )
        check(
            self.max_clips <= MAX_CLIPS,
            "example.max_clips",
            f"at most {MAX_CLIPS} (the paragraph encoder's sentence-index embedding), got {self.max_clips}",
        )
        check(self.fps >= 1, "example.fps", f"must be >= 1, got {self.fps}")
        check(self.clip_seconds > 0, "example.clip_seconds", f"must be > 0, got {self.clip_seconds}")
        frames = self.clip_seconds * self.fps
        check(
            abs(frames - round(frames)) < 1e-6 and round(frames) >= 2,
            "example.clip_seconds",
            f"clip_seconds × fps must be a whole number of frames >= 2, got {self.clip_seconds} × {self.fps}",
        )
        for name in ("height", "width"):
            value = getattr(self, name)
            check(value >= 32 and value % 2 == 0, f"example.{name}", f"must be even and >= 32 (H.264 yuv420p), got {value}")
        most = 2 * (self.min_clips - 1)
        check(
            0 <= self.qa_per_video <= most,
            "example.qa_per_video",
            f"must be between 0 and {most} (2 × (min_clips − 1) distinct questions per video), got {self.qa_per_video}",
        )

    @property
    def frames_per_clip(self) -> int:
        return int(round(self.clip_seconds * self.fps))


# ----------------------------------------------------------------------------- events and plans


@dataclass(frozen=True)
class Event:
    """One clip's event. ``kind`` is an EVENT_SLOTS name; ``colour`` is the target of a ``turn``."""

    kind: str
    wording: int
    colour: str | None = None

    @property
    def descriptor(self) -> str:
        """Compact, order-free identity of the event (``move-left``, ``grow``, ``turn-blue``)."""
        return f"turn-{self.colour}" if self.kind == "turn" else self.kind

    @property
    def phrase(self) -> str:
        return PHRASES[self.kind][self.wording].format(colour=self.colour)


@dataclass(frozen=True)
class ObjectState:
    x: float  # centre, pixels (x right, y down)
    y: float
    size: float  # radius of a circle; polygons scale it by SHAPE_EXTENT
    angle: float  # degrees, clockwise on screen
    colour: str


@dataclass
class VideoPlan:
    """Everything needed to render one long-form video and narrate it; cheap to build."""

    id: str
    split: str
    index: int  # base video index within the split
    shape: str
    background: tuple[int, int, int]
    start: ObjectState
    step: tuple[float, float]  # (dx, dy) pixels of one move
    events: list[Event]
    twin_of: str | None = None  # set on the reordered twin: the base video's id
    twin: str | None = None  # set on a base video that has a twin: the twin's id

    def states(self) -> list[ObjectState]:
        """The object's state at each clip boundary: ``len(events) + 1`` states."""
        out = [self.start]
        for event in self.events:
            out.append(_apply(out[-1], event, self.step))
        return out

    def sentences(self) -> list[str]:
        return [
            f"the {state.colour} {self.shape} {event.phrase}." for state, event in zip(self.states(), self.events)
        ]


def _apply(state: ObjectState, event: Event, step: tuple[float, float]) -> ObjectState:
    """The state once ``event`` is over (the renderer interpolates the frames in between)."""
    if event.kind in MOVES:
        sx, sy = MOVES[event.kind]
        return replace(state, x=state.x + sx * step[0], y=state.y + sy * step[1])
    if event.kind == "grow":
        return replace(state, size=state.size * GROW)
    if event.kind == "shrink":
        return replace(state, size=state.size * SHRINK)
    if event.kind == "spin":
        return replace(state, angle=state.angle + SPIN_DEGREES)
    if event.kind == "turn":
        return replace(state, colour=event.colour)
    raise ValueError(f"unknown event kind {event.kind!r}")


def _rng(cfg: ExampleConfig, split: str, index: int, stream: int, twin: bool = False) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, SPLIT_INDEX[split], index, stream, int(twin)])


def _plan_base(cfg: ExampleConfig, split: str, index: int) -> VideoPlan:
    rng = _rng(cfg, split, index, _PLAN)
    h, w = cfg.height, cfg.width
    n = int(rng.integers(cfg.min_clips, cfg.max_clips + 1))
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    names = list(COLOURS)
    colour = names[int(rng.integers(len(names)))]

    # A circle's spin is invisible: leave it out of the circle's slots.
    slots = [s for s in EVENT_SLOTS if not (shape == "circle" and s == "spin")]
    kinds = [slots[i] for i in rng.permutation(len(slots))[:n]]
    # Turn targets: all different and never the starting colour, so any order is a real change.
    targets = iter(rng.permutation([c for c in names if c != colour]).tolist())
    wordings = rng.integers(WORDINGS, size=n)
    events = [
        Event(kind, int(wording), next(targets) if kind == "turn" else None)
        for kind, wording in zip(kinds, wordings)
    ]

    size = float(rng.uniform(*SIZE_FRACTION)) * min(h, w)
    step = (STEP_FRACTION * w, STEP_FRACTION * h)
    # Start where every order of these events stays in the frame: each direction and "grow"
    # happen at most once, so the extremes are start ± one step at the largest size.
    scale = (GROW if "grow" in kinds else 1.0) * SHAPE_EXTENT[shape]
    room_x = (w - step[0] * (("move-left" in kinds) + ("move-right" in kinds))) / 2
    room_y = (h - step[1] * (("move-up" in kinds) + ("move-down" in kinds))) / 2
    size = min(size, 0.98 * min(room_x, room_y) / scale)  # a large shape that must travel far shrinks
    reach = size * scale
    lo_x = reach + (step[0] if "move-left" in kinds else 0.0)
    hi_x = w - reach - (step[0] if "move-right" in kinds else 0.0)
    lo_y = reach + (step[1] if "move-up" in kinds else 0.0)
    hi_y = h - reach - (step[1] if "move-down" in kinds else 0.0)
    # The shrink above leaves room on both axes; the centre is a guard against rounding.
    x = float(rng.uniform(lo_x, hi_x)) if lo_x < hi_x else (lo_x + hi_x) / 2
    y = float(rng.uniform(lo_y, hi_y)) if lo_y < hi_y else (lo_y + hi_y) / 2
    angle = float(rng.uniform(0.0, 360.0 / SHAPE_SIDES.get(shape, 1)))

    return VideoPlan(
        id=f"{split}-{index:04d}",
        split=split,
        index=index,
        shape=shape,
        background=background,
        start=ObjectState(x, y, size, angle, colour),
        step=step,
        events=events,
    )


def _reordered_twin(cfg: ExampleConfig, base: VideoPlan) -> VideoPlan:
    """The temporal hard negative: same start and events, in another order."""
    rng = _rng(cfg, base.split, base.index, _REORDER)
    n = len(base.events)
    order = np.arange(n)
    while (order == np.arange(n)).all():  # events are distinct, so any other order is a new sequence
        order = rng.permutation(n)
    return replace(base, id=f"{base.id}-reordered", events=[base.events[i] for i in order], twin_of=base.id)


def plan_videos(cfg: ExampleConfig) -> list[VideoPlan]:
    """All long-form videos in output order: train, then val and test with each twin after its base."""
    plans = []
    for split, count in (("train", cfg.train_videos), ("val", cfg.val_videos), ("test", cfg.test_videos)):
        for index in range(count):
            base = _plan_base(cfg, split, index)
            plans.append(base)
            if split != "train":
                twin = _reordered_twin(cfg, base)
                base.twin = twin.id
                plans.append(twin)
    return plans


# ----------------------------------------------------------------------------- rendering


def _smoothstep(t: np.ndarray) -> np.ndarray:
    return t * t * (3.0 - 2.0 * t)


def _tracks(plan: VideoPlan, frames_per_clip: int) -> dict[str, np.ndarray]:
    """Per-frame object parameters over the whole video: x, y, size, angle (T,), rgb (T, 3)."""
    # Frame k of a clip shows progress (k+1)/K, eased: the clip's last frame is the end state,
    # and the object rests around clip boundaries.
    p = _smoothstep(np.arange(1, frames_per_clip + 1, dtype=np.float64) / frames_per_clip)  # (K,)
    x, y, size, angle, rgb = [], [], [], [], []
    state = plan.start
    for event in plan.events:
        end = _apply(state, event, plan.step)
        size.append(state.size * (end.size / state.size) ** p)  # geometric: growth looks uniform
        x.append(state.x + p * (end.x - state.x))
        y.append(state.y + p * (end.y - state.y))
        angle.append(state.angle + p * (end.angle - state.angle))
        c0, c1 = np.array(COLOURS[state.colour], float), np.array(COLOURS[end.colour], float)
        rgb.append(c0 + p[:, None] * (c1 - c0))  # (K, 3)
        state = end
    return {
        "x": np.concatenate(x),
        "y": np.concatenate(y),
        "size": np.concatenate(size),
        "angle": np.concatenate(angle),
        "rgb": np.concatenate(rgb),
    }


def _signed_distance(shape: str, tracks: dict[str, np.ndarray], height: int, width: int) -> np.ndarray:
    """Signed distance (pixels, negative inside) of every pixel to the shape, per frame: (T, H, W).

    A convex regular polygon is the intersection of half-planes, so its distance is the max
    over edges of (offset along the edge's outward normal − apothem): exact inside and near
    the edges, which is all the anti-aliasing below needs.
    """
    rows = np.arange(height)[None, :]  # (1, H): the same rows in every frame
    cols = np.arange(width)[None, :]
    return _distance_at(shape, tracks, rows, cols)


def _distance_at(shape: str, tracks: dict[str, np.ndarray], rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``_signed_distance`` at the pixels of rows (T or 1, h) × columns (T or 1, w) of each frame:
    (T, h, w). Each pixel's value is computed by the same float32 operations whichever pixels are
    asked for, so a box of a frame holds exactly the values of the whole frame there."""
    ys = (rows.astype(np.float32) + np.float32(0.5))[:, :, None]  # pixel centres, (·, h, 1)
    xs = (cols.astype(np.float32) + np.float32(0.5))[:, None, :]  # (·, 1, w)
    dx = xs - tracks["x"].astype(np.float32)[:, None, None]  # (T, 1, w)
    dy = ys - tracks["y"].astype(np.float32)[:, None, None]  # (T, h, 1)
    radius = (tracks["size"] * SHAPE_EXTENT[shape]).astype(np.float32)[:, None, None]
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - radius  # (T, h, w)
    sides = SHAPE_SIDES[shape]
    apothem = radius * math.cos(math.pi / sides)
    distance = None
    for k in range(sides):
        # Vertex k sits at angle - 90° + k·360°/n (vertex 0 points up at angle 0); the normal of
        # the edge from vertex k to k+1 lies halfway between them.
        normal = np.deg2rad(tracks["angle"] - 90.0 + (k + 0.5) * 360.0 / sides).astype(np.float32)
        along = dx * np.cos(normal)[:, None, None] + dy * np.sin(normal)[:, None, None] - apothem  # (T, h, w)
        distance = along if distance is None else np.maximum(distance, along)
    return distance


def render_video(plan: VideoPlan, cfg: ExampleConfig) -> np.ndarray:
    """The video's frames, (T, H, W, 3) uint8 RGB with T = clips × frames_per_clip.

    The object covers a few percent of each frame, so its distance is computed only in a box
    around it per frame: the circle around the shape's centre through its vertices, plus 2
    pixels, holds every pixel it touches (outside it a regular polygon's half-plane distance is
    at least (2 pixels)·cos(π/3) = 1, beyond the anti-aliased edge). Bit for bit the frames of
    ``render_video_reference``, which computes every pixel (tests/test_example.py)."""
    tracks = _tracks(plan, cfg.frames_per_clip)
    radius = tracks["size"] * SHAPE_EXTENT[plan.shape]  # (T,) circumradius
    half = int(math.ceil(float(radius.max()))) + 2
    top = np.floor(tracks["y"]).astype(np.int64) - half  # (T,) the box's first row and column
    left = np.floor(tracks["x"]).astype(np.int64) - half
    rows = top[:, None] + np.arange(2 * half + 1)  # (T, h): rows of the box, some maybe off the frame
    cols = left[:, None] + np.arange(2 * half + 1)  # (T, w)
    coverage = np.clip(0.5 - _distance_at(plan.shape, tracks, rows, cols), 0.0, 1.0)  # (T, h, w)
    coverage[((rows < 0) | (rows >= cfg.height))[:, :, None] | ((cols < 0) | (cols >= cfg.width))[:, None, :]] = 0.0
    t, i, j = np.nonzero(coverage)  # (P,) each
    return _blend(plan, tracks, (len(rows), cfg.height, cfg.width), t, rows[t, i], cols[t, j], coverage[t, i, j])


def render_video_reference(plan: VideoPlan, cfg: ExampleConfig) -> np.ndarray:
    """``render_video`` computing the distance at every pixel of every frame: the reference."""
    tracks = _tracks(plan, cfg.frames_per_clip)
    distance = _signed_distance(plan.shape, tracks, cfg.height, cfg.width)  # (T, H, W)
    coverage = np.clip(0.5 - distance, 0.0, 1.0)  # (T, H, W): 1-pixel anti-aliased edge
    t, yy, xx = np.nonzero(coverage)  # (P,) each
    return _blend(plan, tracks, coverage.shape, t, yy, xx, coverage[t, yy, xx])


def _blend(plan: VideoPlan, tracks: dict[str, np.ndarray], size: tuple[int, int, int], t, yy, xx, alpha) -> np.ndarray:
    """Frames (T, H, W, 3) of the background with the object's colour blended in at the pixels
    (t, yy, xx) it covers, by ``alpha`` (P,) each. Only those pixels are blended (a dense blend
    over every pixel was most of the generation time)."""
    background = np.asarray(plan.background, np.float32)  # (3,)
    row = np.empty((size[2], 3), np.uint8)  # (W, 3): one row of background, then every row from it
    row[:] = plan.background  # (filling (T, H, W, 3) from a 3-vector directly is ~15× slower)
    frames = np.empty((*size, 3), np.uint8)  # (T, H, W, 3)
    frames[:] = row
    colour = tracks["rgb"].astype(np.float32)[t]  # (P, 3)
    frames[t, yy, xx] = np.rint(background + alpha[:, None] * (colour - background)).astype(np.uint8)
    return frames


# ----------------------------------------------------------------------------- samples and QA


def _segments(plan: VideoPlan, cfg: ExampleConfig) -> list[Segment]:
    return [
        Segment(round(i * cfg.clip_seconds, 6), round((i + 1) * cfg.clip_seconds, 6), text)
        for i, text in enumerate(plan.sentences())
    ]


def _sample(plan: VideoPlan, cfg: ExampleConfig) -> Sample:
    task: dict = {}
    if plan.twin is not None or plan.twin_of is not None:
        task["group"] = plan.twin_of or plan.id
        task["hard_negative_of"] = plan.twin or plan.twin_of
    task["events"] = [event.descriptor for event in plan.events]
    return Sample(
        id=plan.id,
        video=f"videos/{plan.id}.mp4",
        duration=round(len(plan.events) * cfg.clip_seconds, 6),
        segments=_segments(plan, cfg),
        split=plan.split,
        task=task,
    )


def _absent_events(plan: VideoPlan, rng: np.random.Generator) -> list[Event]:
    """Events that never happen in this video, drawn the way its own events were, in random order.

    The video's events are a random subset of the shape's ``EVENT_SLOTS``; the absent ones are the
    slots it left over (a turn's target a colour no turn of this video has, never the starting
    one), each with a random wording. So an absent event and an event of the video are alike to a
    reader of the text alone: the same kinds, turns, colours and wordings, equally often. (Taking
    every absent turn colour, in one wording, made "turns <colour>" mean "absent" to a text-only
    reader.) A video with 7 or 8 events leaves one slot or none.
    """
    slots = Counter(s for s in EVENT_SLOTS if not (plan.shape == "circle" and s == "spin"))
    slots.subtract(Counter(event.kind for event in plan.events))
    left = [kind for kind, count in slots.items() for _ in range(count)]
    used = {plan.start.colour} | {event.colour for event in plan.events if event.kind == "turn"}
    colours = iter(rng.permutation([c for c in COLOURS if c not in used]).tolist())
    return [
        Event(kind, int(rng.integers(WORDINGS)), next(colours) if kind == "turn" else None)
        for kind in (left[i] for i in rng.permutation(len(left)).tolist())
    ]


def how2qa_items(plan: VideoPlan, cfg: ExampleConfig) -> list[Sample]:
    """``qa_per_video`` questions "what happens before/after <clip i>?", answered by clip i±1.

    Questions and candidates name the object by its shape only ("the triangle shrinks."): the
    narration's colour changes with every turn, so a colour in the text told a reader which
    sentences sit next to each other. The distractors: ``SAME_VIDEO_DISTRACTORS`` other clips of the
    video (never the anchor), then events that never happen here (``_absent_events``), and more
    clips of the video where it has too few of those.
    """
    rng = _rng(cfg, plan.split, plan.index, _HOW2QA, twin=plan.twin_of is not None)
    n = len(plan.events)
    # (anchor clip, answer clip, relation): every "after" and "before" question the video allows.
    options = [(i, i + 1, "after") for i in range(n - 1)] + [(i, i - 1, "before") for i in range(1, n)]
    chosen = rng.choice(len(options), size=cfg.qa_per_video, replace=False)
    base = _sample(plan, cfg)
    items = []
    for k, option in enumerate(chosen.tolist()):
        anchor, answer_clip, relation = options[option]
        phrase = plan.events[anchor].phrase
        if rng.integers(2):
            question = f"What happens {relation} the {plan.shape} {phrase}?"
        else:
            question = f"What does the {plan.shape} do {relation} it {phrase}?"
        others = [plan.events[j] for j in rng.permutation(n).tolist() if j not in (anchor, answer_clip)]
        absent = _absent_events(plan, rng)
        picked = others[:SAME_VIDEO_DISTRACTORS] + absent[: 3 - SAME_VIDEO_DISTRACTORS]
        picked += others[SAME_VIDEO_DISTRACTORS : SAME_VIDEO_DISTRACTORS + 3 - len(picked)]
        answer = int(rng.integers(4))
        picked.insert(answer, plan.events[answer_clip])
        candidates = [f"the {plan.shape} {event.phrase}." for event in picked]
        items.append(
            Sample(
                id=f"{plan.id}-how2qa{k}",
                video=base.video,
                duration=base.duration,
                segments=base.segments,
                split=plan.split,
                task={
                    "question": question,
                    "candidates": candidates,
                    "answer": answer,
                    "span": [base.segments[answer_clip].start, base.segments[answer_clip].end],
                    "subtitles": [],
                },
            )
        )
    return items


def event_phrase(text: str) -> str:
    """The verb phrase of an example sentence, candidate or question: "the green triangle spins."
    -> "spins"; "What does the circle do after it grows?" -> "grows" (the anchor's event)."""
    words = text.rstrip(".?").split(" ")
    at = next(i for i, word in enumerate(words) if word in SHAPES) + 1
    if words[at : at + 1] == ["do"]:  # "do after it <phrase>"
        at += 3
    return " ".join(words[at:])


def presence_accuracy(items: list[Sample]) -> float:
    """Expected accuracy on How2QA-shaped items of a reader that knows which events each video
    holds and nothing of their order: it picks at random among the candidates that occur.

    Chance is 0.25 and the order gives 1; this is the bar between "knows what happens" and "knows
    when". Below 0.5 where videos with 7 or 8 events fill distractors from their own clips."""
    total = 0.0
    for item in items:
        occur = {event_phrase(segment.text) for segment in item.segments}
        present = [i for i, text in enumerate(item.task["candidates"]) if event_phrase(text) in occur]
        total += 1 / len(present) if item.task["answer"] in present else 0.0
    return total / len(items)


def violin_items(plan: VideoPlan, cfg: ExampleConfig) -> list[Sample]:
    """``qa_per_video`` pairs of statements "the <shape> <A> before it <B>." (true) and the
    same with A and B swapped (false), in random order within the pair."""
    rng = _rng(cfg, plan.split, plan.index, _VIOLIN, twin=plan.twin_of is not None)
    n = len(plan.events)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    chosen = rng.choice(len(pairs), size=cfg.qa_per_video, replace=False)
    base = _sample(plan, cfg)
    items = []
    for option in chosen.tolist():
        first, second = (plan.events[i].phrase for i in pairs[option])
        # Either template is true when ``a`` is the earlier event.
        template = "the {shape} {a} before it {b}." if rng.integers(2) else "the {shape} {b} after it {a}."
        statements = [
            (template.format(shape=plan.shape, a=a, b=b), label)
            for (a, b), label in (((first, second), 1), ((second, first), 0))
        ]
        if rng.integers(2):
            statements.reverse()
        for statement, label in statements:
            items.append(
                Sample(
                    id=f"{plan.id}-violin{len(items)}",
                    video=base.video,
                    duration=base.duration,
                    segments=base.segments,
                    split=plan.split,
                    task={"statement": statement, "label": label, "subtitles": []},
                )
            )
    return items


# ----------------------------------------------------------------------------- source interface


def read(cfg: ExampleConfig, out_dir: Path, rejections: Rejections) -> Iterator[Sample]:
    """Render the videos into out_dir/'videos'/<id>.mp4, write the QA files, yield the long-form samples.

    The QA files and ``example.json`` are written first (they need the plans only), so they
    exist even if the caller stops consuming early. Nothing here is ever rejected; ``prepare``
    validates the yielded samples centrally.
    """
    out_dir = Path(out_dir)
    began = time.perf_counter()
    plans = plan_videos(cfg)
    how2qa = [item for plan in plans for item in how2qa_items(plan, cfg)]
    violin = [item for plan in plans for item in violin_items(plan, cfg)]
    write_corpus(out_dir, how2qa, Rejections(), name="how2qa.jsonl")
    write_corpus(out_dir, violin, Rejections(), name="violin.jsonl")
    counts = {"how2qa": len(how2qa), "violin": len(violin), "videos": len(plans)}
    (out_dir / "example.json").write_text(json.dumps(counts, indent=2) + "\n")
    items = {"how2qa": how2qa, "violin": violin}.get(cfg.task)

    # Frames are rendered on two threads (numpy releases the GIL), at most two videos ahead; each
    # is encoded here, in order, one at a time: concurrent encoders did not always give the same
    # bytes (tests/test_example.py).
    workers = min(2, len(os.sched_getaffinity(0)))
    pool = ThreadPoolExecutor(max_workers=workers)
    queued = iter(plans)
    pending = deque((plan, pool.submit(render_video, plan, cfg)) for plan in islice(queued, workers))
    try:  # a caller that stops early (an error downstream) leaves the rest unrendered
        while pending:
            plan, frames = pending.popleft()
            following = next(queued, None)
            if following is not None:
                pending.append((following, pool.submit(render_video, following, cfg)))
            write_video(out_dir / "videos" / f"{plan.id}.mp4", frames.result(), cfg.fps)
            if items is None:
                yield _sample(plan, cfg)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    yield from items or ()
    log.info(
        "example: %d videos, %d How2QA and %d VIOLIN items in %.1fs",
        len(plans), len(how2qa), len(violin), time.perf_counter() - began,
    )


def raw_inputs(cfg: ExampleConfig) -> list[str]:
    """Nothing on disk feeds the example: the config and the stage version key it."""
    return []
