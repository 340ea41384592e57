"""obtain_ml100k: copy from a local shared copy, or extract from the recbole wheel; idempotent and atomic."""

from __future__ import annotations

import zipfile

import pytest
from data_fixtures import write_lines

from trainer.data.obtain import ML100K_FILES, WHEEL_FOLDER, ObtainError, obtain_ml100k


def fake_shared(directory):
    for name in ML100K_FILES:
        write_lines(directory / name, [f"header of {name}", "1\t2"])
    return directory


def never_download(_directory):
    raise AssertionError("the wheel must not be downloaded when a local copy exists")


def test_copies_the_shared_copy_and_is_idempotent(tmp_path):
    shared = fake_shared(tmp_path / "shared" / "ml-100k")
    dest = obtain_ml100k(tmp_path / "data" / "ml-100k", shared_dir=shared, download_wheel=never_download)
    assert sorted(p.name for p in dest.iterdir()) == sorted(ML100K_FILES)
    assert (dest / "ml-100k.kg").read_text() == (shared / "ml-100k.kg").read_text()
    stamp = (dest / "ml-100k.inter").stat().st_mtime_ns
    assert obtain_ml100k(dest, shared_dir=tmp_path / "gone", download_wheel=never_download) == dest
    assert (dest / "ml-100k.inter").stat().st_mtime_ns == stamp
    assert [p.name for p in dest.parent.iterdir()] == ["ml-100k"]  # no temporary leftovers


def test_extracts_from_the_wheel_when_no_local_copy(tmp_path):
    def download(directory):
        wheel = directory / "recbole-1.2.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr("recbole/__init__.py", "")
            for name in ML100K_FILES:
                archive.writestr(WHEEL_FOLDER + name, f"from the wheel: {name}\n")
        return wheel

    dest = obtain_ml100k(tmp_path / "ml-100k", shared_dir=tmp_path / "absent", download_wheel=download)
    assert (dest / "ml-100k.link").read_text() == "from the wheel: ml-100k.link\n"
    assert sorted(p.name for p in dest.iterdir()) == sorted(ML100K_FILES)


def test_failures_leave_nothing_behind(tmp_path):
    def broken_download(directory):
        wheel = directory / "recbole-1.2.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(WHEEL_FOLDER + "ml-100k.inter", "x")
        return wheel

    with pytest.raises(ObtainError, match="has no recbole/dataset_example/ml-100k/ml-100k.item"):
        obtain_ml100k(tmp_path / "ml-100k", shared_dir=tmp_path / "absent", download_wheel=broken_download)
    assert list(tmp_path.iterdir()) == []
    partial = tmp_path / "partial"
    write_lines(partial / "ml-100k.inter", ["x"])
    with pytest.raises(ObtainError, match="exists but lacks"):
        obtain_ml100k(partial, shared_dir=tmp_path / "absent", download_wheel=never_download)
