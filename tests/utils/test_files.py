"""Atomic writes: the old file survives a failed write, a new file gets the umask's mode (not mkstemp's 0o600), an
existing file keeps its own mode."""

from __future__ import annotations

import stat

import pytest

from sfmamba.utils import files
from sfmamba.utils.files import atomic_write, atomic_write_text


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_files_follow_the_umask_and_old_ones_keep_their_mode(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_UMASK", 0o027)  # the process's umask, read at import
    atomic_write_text(tmp_path / "new.json", "{}")
    assert _mode(tmp_path / "new.json") == 0o640
    shared = tmp_path / "shared.json"
    shared.write_text("1")
    shared.chmod(0o664)
    atomic_write_text(shared, "2")
    assert _mode(shared) == 0o664 and shared.read_text() == "2"


@pytest.mark.parametrize("failure", [KeyboardInterrupt(), OSError("No space left on device")], ids=["kill", "full"])
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, failure):
    path = tmp_path / "last.state.pt"
    path.write_text("step 2")

    def half_written(temp: str) -> None:
        with open(temp, "w") as f:
            f.write("step 3, trunc")
        raise failure

    with pytest.raises(type(failure)) as raised:
        atomic_write(path, half_written)
    assert raised.value is failure
    assert path.read_text() == "step 2"
    assert [p.name for p in tmp_path.iterdir()] == ["last.state.pt"]
