import os
import stat

import numpy as np
import pytest

from tlkit.io import RowFile, building, cache_folder, is_built

pytestmark = pytest.mark.backend_independent  # see conftest: the TensorFlow pass runs it


def test_row_file_round_trips_and_is_a_plain_npy(tmp_path):
    data = np.arange(5 * 4 * 3, dtype=np.float32).reshape(5, 4, 3)
    with RowFile(tmp_path / "a.npy", data.shape, np.float32) as rows:
        rows.write(3, data[3:])
        rows.write(0, data[:3])
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy", allow_pickle=False), data)
    with RowFile(tmp_path / "a.npy") as rows:
        assert len(rows) == 5 and rows.dtype == np.float32
        np.testing.assert_array_equal(rows.read(1, 4), data[1:4])


def test_a_cache_folder_appears_whole_or_not_at_all(tmp_path):
    folder = cache_folder(tmp_path, "things", {"a": 1})
    assert folder != cache_folder(tmp_path, "things", {"a": 2})
    assert folder == cache_folder(tmp_path, "things", {"a": 1})
    with pytest.raises(RuntimeError):
        with building(folder) as staging:
            (staging / "manifest.json").write_text("{}")
            raise RuntimeError("killed half-way")
    assert not folder.exists() and list(folder.parent.iterdir()) == []
    with building(folder) as staging:
        (staging / "manifest.json").write_text("{}")
    assert is_built(folder) and list(folder.parent.iterdir()) == [folder]


def test_a_cache_finished_meanwhile_by_another_builder_is_kept(tmp_path):
    folder = cache_folder(tmp_path, "things", {"a": 1})
    with building(folder) as mine:
        (mine / "manifest.json").write_text('"mine"')
        with building(folder) as theirs:  # another process finishes the same recipe first
            (theirs / "manifest.json").write_text('"theirs"')
    assert (folder / "manifest.json").read_text() == '"theirs"' and list(folder.parent.iterdir()) == [folder]


def test_a_truncated_row_file_is_detected(tmp_path):
    with RowFile(tmp_path / "a.npy", (4, 8), np.float32) as rows:
        rows.write(0, np.ones((4, 8), np.float32))
    with open(tmp_path / "a.npy", "r+b") as handle:
        handle.truncate(handle.seek(0, 2) - 10)
    with RowFile(tmp_path / "a.npy") as rows:
        np.testing.assert_array_equal(rows.read(0, 3), np.ones((3, 8)))
        with pytest.raises(OSError, match="truncated"):
            rows.read(2, 4)


def test_staging_left_by_a_killed_builder_is_removed_and_a_live_ones_kept(tmp_path):
    folder = cache_folder(tmp_path, "things", {"a": 1})
    folder.parent.mkdir(parents=True)
    dead = folder.parent / f".{folder.name}.999999999.abc"  # no such process
    live = folder.parent / f".{folder.name}.{os.getpid()}.def"  # a builder still running (this process)
    for leftover in (dead, live):
        leftover.mkdir()
        (leftover / "all.npy").write_bytes(bytes(1000))
    with building(folder) as staging:
        (staging / "manifest.json").write_text("{}")
    assert not dead.exists() and live.exists() and is_built(folder)


def test_cache_files_get_the_usual_permissions(tmp_path):
    """Staging is private while it is built; the finished cache gets the umask's usual modes (shared caches)."""
    umask = os.umask(0)
    os.umask(umask)
    folder = cache_folder(tmp_path, "things", {"a": 1})
    with building(folder) as staging:
        (staging / "manifest.json").write_text("{}")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask != 0o700
    assert stat.S_IMODE((folder / "checksums.json").stat().st_mode) == 0o666 & ~umask
