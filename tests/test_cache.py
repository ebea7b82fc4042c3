import numpy as np
import pytest

from tlkit.cache import RowFile, building, cache_folder, is_built


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
