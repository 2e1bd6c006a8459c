"""Frames stored once per work directory: the frame pool shared by every cache's store."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers_video import make_video, sample, write_corpus_file
from lfvila_cli.data.cache import CacheConfig, cache_frames
from lfvila_cli.data.framestore import FrameStore

K, H, W = 4, 36, 44


@pytest.fixture(scope="module")
def two_corpora(tmp_path_factory):
    """Two corpora over byte-identical copies of the same videos at different paths (as two
    prepare artifacts of the same example are): the same spans, plus one of its own each."""
    root = tmp_path_factory.mktemp("pool")
    for name in ("one", "two"):
        (root / name).mkdir()
    make_video(root / "one" / "v0.mp4", seed=0)
    make_video(root / "one" / "v1.mp4", seed=1)
    for video in ("v0.mp4", "v1.mp4"):
        shutil.copy(root / "one" / video, root / "two" / video)
    one = write_corpus_file(root / "one", [
        sample("a", str(root / "one" / "v0.mp4"), [(0, 1), (1, 2), (2, 3)]),
        sample("b", str(root / "one" / "v1.mp4"), [(0, 1.5), (1.5, 3)]),
    ])
    two = write_corpus_file(root / "two", [
        sample("q1", str(root / "two" / "v0.mp4"), [(1, 2), (2, 3)]),  # two rows of "a"
        sample("q2", str(root / "two" / "v1.mp4"), [(0, 1.5), (1.5, 3)]),  # both rows of "b"
        sample("q3", str(root / "two" / "v1.mp4"), [(0.5, 2.5)]),  # a span no one stored
    ])
    return one, two


def cfg(**kw):
    return CacheConfig(**{"frames_per_segment": K, "height": H, "width": W, "workers": 1, **kw})


def inode(url: str, row: int) -> int:
    return (Path(url) / "frames" / "c" / str(row) / "0").stat().st_ino


def test_the_same_span_of_the_same_video_is_stored_once_and_survives_deletion(two_corpora, tmp_path):
    one, two = two_corpora
    pool = tmp_path / "pool"
    first, second = str(tmp_path / "first.zarr"), str(tmp_path / "second.zarr")
    assert cache_frames(one, cfg(), first, progress=False, pool_dir=pool)["linked"] == 0
    summary = cache_frames(two, cfg(), second, progress=False, pool_dir=pool)
    assert summary["ok"] == 5 and summary["linked"] == 4 and summary["frames"] == K  # only q3 decoded
    # q1's rows are a's rows 1-2, q2's are b's (rows 3-4): the same files, not copies
    assert [inode(second, r) for r in (0, 1, 2, 3)] == [inode(first, r) for r in (1, 2, 3, 4)]
    expected = {
        "q1": FrameStore(first).sample("a", slice(1, 3)),
        "q2": FrameStore(first).sample("b"),
        "q3": FrameStore(second).sample("q3"),
    }
    # reference: the same corpus decoded without a pool
    alone = str(tmp_path / "alone.zarr")
    cache_frames(two, cfg(), alone, progress=False)
    for sample_id in ("q1", "q2", "q3"):
        for got, ref in zip(FrameStore(second).sample(sample_id), FrameStore(alone).sample(sample_id)):
            np.testing.assert_array_equal(got, ref)
    # deleting the first store breaks nothing of the second's
    shutil.rmtree(first)
    for sample_id, (frames, times) in expected.items():
        got_frames, got_times = FrameStore(second).sample(sample_id)
        np.testing.assert_array_equal(got_frames, frames)
        np.testing.assert_array_equal(got_times, times)
    # the pool keeps rows the second store still uses; a third cache of the first corpus
    # decodes only the row no remaining store has ("a" segment 0), after pruning nothing it needs
    third = str(tmp_path / "third.zarr")
    summary = cache_frames(one, cfg(), third, progress=False, pool_dir=pool)
    assert summary["linked"] == 4 and summary["frames"] == K
    # once every store is gone, the next cache run's prune frees the pool
    shutil.rmtree(second)
    shutil.rmtree(third)
    frames_files = list(pool.rglob("*.frames"))
    assert frames_files and all(f.stat().st_nlink == 1 for f in frames_files)
    cache_frames(two, cfg(), str(tmp_path / "fourth.zarr"), progress=False, pool_dir=pool)
    assert not [f for f in pool.rglob("*.frames") if f.stat().st_nlink == 1]


def test_only_the_same_layout_and_codec_share(two_corpora, tmp_path):
    one, two = two_corpora
    pool = tmp_path / "pool"
    cache_frames(one, cfg(), str(tmp_path / "jpeg.zarr"), progress=False, pool_dir=pool)
    assert cache_frames(two, cfg(codec="raw"), str(tmp_path / "raw.zarr"), progress=False, pool_dir=pool)["linked"] == 0
    assert cache_frames(two, cfg(quality=80), str(tmp_path / "q80.zarr"), progress=False, pool_dir=pool)["linked"] == 0
    assert cache_frames(two, cfg(width=40), str(tmp_path / "w40.zarr"), progress=False, pool_dir=pool)["linked"] == 0
    assert cache_frames(two, cfg(), str(tmp_path / "same.zarr"), progress=False, pool_dir=pool)["linked"] == 4


def test_a_changed_video_is_not_taken_for_the_old_one(two_corpora, tmp_path):
    one, _ = two_corpora
    root = tmp_path / "changed"
    root.mkdir()
    make_video(root / "v0.mp4", seed=7)  # same name and length, other content
    shutil.copy(Path(one).parent / "v1.mp4", root / "v1.mp4")
    changed = write_corpus_file(root, [sample("a", str(root / "v0.mp4"), [(0, 1), (1, 2), (2, 3)]),
                                       sample("b", str(root / "v1.mp4"), [(0, 1.5), (1.5, 3)])])
    pool = tmp_path / "pool"
    cache_frames(one, cfg(), str(tmp_path / "first.zarr"), progress=False, pool_dir=pool)
    summary = cache_frames(changed, cfg(), str(tmp_path / "second.zarr"), progress=False, pool_dir=pool)
    assert summary["linked"] == 2  # v1's rows only


def test_force_decodes_again_and_stores_without_a_local_directory_do_not_share(two_corpora, tmp_path):
    one, _ = two_corpora
    pool = tmp_path / "pool"
    cache_frames(one, cfg(), str(tmp_path / "first.zarr"), progress=False, pool_dir=pool)
    fresh = cache_frames(one, cfg(), str(tmp_path / "forced.zarr"), progress=False, pool_dir=pool, take_from_pool=False)
    assert fresh["linked"] == 0 and fresh["frames"] == 5 * K
    url = f"memory://lfvila-pool-{tmp_path.name}/frames.zarr"
    assert cache_frames(one, cfg(), url, progress=False, pool_dir=pool)["linked"] == 0
