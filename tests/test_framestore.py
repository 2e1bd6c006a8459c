"""FrameStore, the reader of the frame store: exact round trip, index, errors, failures table."""

import json
from pathlib import Path

import numpy as np
import pytest

from helpers_video import sample, write_corpus_file
from lfvila_cli.data import cache as cache_mod
from lfvila_cli.data import framestore
from lfvila_cli.data.cache import CacheConfig, plan_rows, store_spec
from lfvila_cli.data.framestore import (
    ERROR_BYTES,
    FrameStore,
    UnknownSampleError,
    create_layout,
    decode_reason,
    encode_reason,
    open_group,
    row_arrays,
)
from lfvila_cli.errors import DataError

K, H, W = 3, 8, 12


@pytest.fixture
def written(tmp_path):
    """A store laid out by the cache for 3 samples (2 + 3 + 1 segments), filled by hand:
    random frames in every row except row 3 (failed) and row 5 (left pending)."""
    records = [
        sample("first", "a.mp4", [(0, 1), (1, 2)]),
        sample("second", "b.mp4", [(0, 1), (1, 2), (2, 3)]),
        sample("third", "a.mp4", [(0, 3)]),
    ]
    corpus = write_corpus_file(tmp_path, records)
    cfg = CacheConfig(frames_per_segment=K, height=H, width=W, codec="raw")
    plan = plan_rows(corpus, cfg)
    url = str(tmp_path / "frames.zarr")
    group = open_group(url, mode="a")
    create_layout(group, store_spec(cfg, plan))
    arrays = row_arrays(group)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (plan.rows, K, H, W, 3), dtype=np.uint8)
    times = rng.random((plan.rows, K), dtype=np.float32)
    for row in range(plan.rows):
        if row == 3:
            cache_mod._write_failed(arrays, row, "decode failed at frames 9-15: invalid data ✗")
        elif row != 5:
            cache_mod._write_ok(arrays, row, frames[row], times[row])
    return url, frames, times


def test_samples_read_back_exactly_what_was_written(written):
    url, frames, times = written
    store = FrameStore(url)
    assert len(store) == 3 and store.sample_ids == ["first", "second", "third"] and "second" in store
    assert (store.frames_per_segment, store.height, store.width, store.num_rows) == (K, H, W, 6)
    assert list(store.rows("first")) == [0, 1] and list(store.rows("second")) == [2, 3, 4] and list(store.rows("third")) == [5]
    got_frames, got_times = store.sample("first")
    assert got_frames.dtype == np.uint8 and got_times.dtype == np.float32
    np.testing.assert_array_equal(got_frames, frames[0:2])
    np.testing.assert_array_equal(got_times, times[0:2])
    # a window of consecutive segments reads only those rows (the 4-clip window of docs/method.md §1)
    got_frames, got_times = store.sample("second", segments=slice(2, 3))
    np.testing.assert_array_equal(got_frames, frames[4:5])
    np.testing.assert_array_equal(got_times, times[4:5])
    got_frames, _ = store.sample("second", segments=slice(0, 1))
    np.testing.assert_array_equal(got_frames, frames[2:3])


def test_unknown_failed_and_pending_samples_raise_naming_the_sample_and_reason(written):
    url, _, _ = written
    store = FrameStore(url)
    with pytest.raises(UnknownSampleError, match="sample 'nope' is not in the frame store") as err:
        store.sample("nope")
    assert isinstance(err.value, KeyError) and isinstance(err.value, DataError)
    assert str(err.value).startswith(url)  # one plain line, not KeyError's quoted repr
    with pytest.raises(DataError, match=r"sample 'second' segment 1 \(row 3\) is failed: decode failed at frames 9-15: invalid data ✗"):
        store.sample("second")
    with pytest.raises(DataError, match=r"sample 'third' segment 0 \(row 5\) is still pending"):
        store.sample("third")
    # the failed row does not spoil the others of the sample
    assert store.sample("second", segments=slice(2, 3))[0].shape == (1, K, H, W, 3)


def test_status_counts_and_failures_table(written):
    url, _, _ = written
    store = FrameStore(url)
    assert store.status_counts() == {"pending": 1, "ok": 4, "failed": 1}
    assert store.failures() == [
        {"row": 3, "sample": "second", "segment": 1, "reason": "decode failed at frames 9-15: invalid data ✗"}
    ]


def test_reason_encoding_cuts_on_a_character_boundary():
    long = "é" * 200  # 400 bytes of utf-8
    encoded = encode_reason(long)
    assert encoded.shape == (ERROR_BYTES,) and encoded.dtype == np.uint8
    assert decode_reason(encoded) == "é" * 128
    assert decode_reason(encode_reason("file not found")) == "file not found"


def test_opening_something_that_is_not_a_finished_store_is_a_clear_error(tmp_path, written):
    with pytest.raises(DataError, match="no frame store here"):
        FrameStore(tmp_path / "nothing.zarr")
    half = open_group(str(tmp_path / "half.zarr"), mode="a")
    half.attrs.update({"layout_version": 1})
    with pytest.raises(DataError, match="never completely created"):
        FrameStore(tmp_path / "half.zarr")
    other = open_group(str(tmp_path / "other.zarr"), mode="a")
    other.attrs.update({"layout_version": 99, "ready": True})
    with pytest.raises(DataError, match="layout_version=99"):
        FrameStore(tmp_path / "other.zarr")


def test_layout_is_zarr_v3_one_row_per_chunk_without_sharding(written):
    url, _, _ = written
    group = open_group(url, mode="r")
    assert group.metadata.zarr_format == 3
    for name in ("frames", "times", "status", "error"):
        array = group[name]
        assert array.chunks[0] == 1 and array.shards is None, name
    assert group["frames"].shape == (6, K, H, W, 3) and group["error"].shape == (6, ERROR_BYTES)
    assert group.attrs["layout_version"] == 2 and group.attrs["ready"] is True
    assert (group.attrs["frames_per_segment"], group.attrs["height"], group.attrs["width"]) == (K, H, W)
    assert group.attrs["segment_mode"] == "clips"
    root = json.loads((Path(url) / "zarr.json").read_text())
    assert root.get("consolidated_metadata") is None  # it would go stale while rows are filled


# --- the store as the stage machinery sees it ----------------------------------------------------


def _spec(tmp_path, **overrides):
    corpus = tmp_path / "samples.jsonl"  # written by the ``written`` fixture
    cfg = CacheConfig(**{"frames_per_segment": K, "height": H, "width": W, "codec": "raw", **overrides})
    return store_spec(cfg, plan_rows(corpus, cfg))


def test_presence_attributes_and_identity_of_a_store(tmp_path, written):
    url, _, _ = written
    assert framestore.store_location(tmp_path) == url and framestore.store_location(tmp_path, "s3://b/x.zarr") == "s3://b/x.zarr"
    assert framestore.store_present(url) is None
    missing = str(tmp_path / "gone.zarr")
    assert framestore.store_present(missing) == f"its frame store {missing} is missing"
    assert framestore.location_exists(url) and not framestore.location_exists(missing)
    attrs = framestore.read_attrs(url)
    assert framestore.is_frame_store(attrs) and attrs["ready"] is True and attrs["rows"] == 6
    assert framestore.read_attrs(missing) is None and not framestore.is_frame_store(None)
    other = open_group(str(tmp_path / "other.zarr"), mode="a")
    other.attrs.update({"tool": "someone else"})
    assert framestore.read_attrs(tmp_path / "other.zarr") == {"tool": "someone else"}
    assert not framestore.is_frame_store(framestore.read_attrs(tmp_path / "other.zarr"))
    (tmp_path / "torn.zarr").mkdir()
    (tmp_path / "torn.zarr" / "zarr.json").write_text("{")
    assert framestore.read_attrs(tmp_path / "torn.zarr") is None
    assert framestore.same_rows(attrs, _spec(tmp_path))
    assert not framestore.same_rows(attrs, _spec(tmp_path, width=W + 2))
    assert not framestore.same_rows({**attrs, "ready": False}, _spec(tmp_path))
    framestore.delete_store(tmp_path / "other.zarr")
    assert not (tmp_path / "other.zarr").exists()


def test_owner_records():
    mine = framestore.owner_record("wd-1", "/data/wd", "cache", "ab" * 32)
    assert mine == {"workdir_id": "wd-1", "workdir": "/data/wd", "stage": "cache", "key": "ab" * 32}
    assert framestore.recorded_owner({"owner": mine}) == mine
    assert framestore.recorded_owner({"owner": "x"}) is None and framestore.recorded_owner({}) is None and framestore.recorded_owner(None) is None
    assert framestore.same_owner(mine, {**mine, "workdir": "/elsewhere"})  # a moved work directory keeps its id
    assert not framestore.same_owner(mine, {**mine, "key": "cd" * 32})
    assert framestore.describe_owner(mine) == f"cache artifact {'ab' * 8} of the work directory /data/wd"


def test_seed_store_links_the_earlier_store_and_resets_rows(tmp_path, written):
    url, frames, _ = written
    before = {p: p.read_bytes() for p in Path(url).rglob("*") if p.is_file()}
    dest = tmp_path / "new" / "frames.zarr"
    dest.parent.mkdir()
    owner = framestore.owner_record("wd-1", "/data/wd", "cache", "cd" * 32)
    framestore.seed_store(url, dest, [2, 3], owner)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["frames.zarr"]  # built aside, renamed into place
    seeded = FrameStore(dest)
    assert seeded.status_counts() == {"pending": 3, "ok": 3, "failed": 0} and seeded.failures() == []
    assert framestore.recorded_owner(seeded.attrs) == owner
    assert not np.asarray(open_group(str(dest), mode="r")["error"][3]).any()
    np.testing.assert_array_equal(seeded.sample("first")[0], frames[0:2])
    assert (dest / "frames" / "c" / "0" / "0" / "0" / "0" / "0").stat().st_nlink == 2  # hard-linked, not copied
    assert {p: p.read_bytes() for p in Path(url).rglob("*") if p.is_file()} == before  # the earlier store as it was
    assert FrameStore(url).status_counts() == {"pending": 1, "ok": 4, "failed": 1}


def test_the_module_docstring_documents_every_array_and_attribute():
    doc = framestore.__doc__
    for name in (*framestore.ARRAY_NAMES, *framestore.LAYOUT_ATTRS, *framestore.OWNER_FIELDS):
        assert f"``{name}``" in doc, name
    for name in ("layout_version", "samples", "rows", "plan_digest", "frames_codec", "ready", "owner"):
        assert f"``{name}``" in doc, name
