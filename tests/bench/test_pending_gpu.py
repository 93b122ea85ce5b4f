"""benchmarks/pending_gpu.sh carries Triton's kernel cache from one device call to the next: a call packs the cache
into $OUT after each step (split into parts where large) and the next call restores it from what came back."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "pending_gpu.sh"
IR_SUFFIXES = ("ttir", "ttgir", "llir", "ptx", "source")  # what a call returns emptied (a launch reads none of them)


def _run(cache: Path, out: Path, tgz: Path, **env: str) -> subprocess.CompletedProcess:
    """One step (`scan-table`) with `true` as its Python: only the script's own work runs."""
    variables = dict(os.environ, PY="true", OUT=str(out), TRITON_CACHE_DIR=str(cache), TRITON_CACHE_TGZ=str(tgz), **env)
    return subprocess.run(
        ["bash", str(SCRIPT), "scan-table"], env=variables, capture_output=True, text=True, timeout=60
    )


def _fill(cache: Path, sizes: dict[str, int]) -> dict[str, bytes]:
    contents = {name: os.urandom(size) for name, size in sizes.items()}  # random: gzip cannot shrink them
    for name, data in contents.items():
        (cache / name).parent.mkdir(parents=True, exist_ok=True)
        (cache / name).write_bytes(data)
    return contents


@pytest.mark.parametrize("part_mib, parts", [(15, 0), (1, 3)])
def test_triton_cache_travels_between_calls(tmp_path, part_mib, parts):
    contents = _fill(tmp_path / "cache", {"ABC/kernel.cubin": 1 << 20, "ABC/__grp__kernel.json": 100,
                                          "DEF/other.cubin": (1 << 20) + 5000})  # fmt: skip
    _fill(tmp_path / "cache", {f"ABC/kernel.{suffix}": 5000 for suffix in IR_SUFFIXES})
    first = _run(tmp_path / "cache", tmp_path / "out1", tmp_path / "none.tgz", TRITON_CACHE_PART_MIB=str(part_mib))
    assert first.returncode == 0, first.stderr
    returned = sorted(p.name for p in (tmp_path / "out1").iterdir() if p.name.startswith("triton_cache"))
    if parts:  # ~2 MiB packed in 1 MiB parts
        assert returned == [f"triton_cache.tgz.part-a{c}" for c in "abc"[:parts]], returned
    else:
        assert returned == ["triton_cache.tgz"], returned
    # the next call, on a fresh machine: restored from what came back, whole or in parts
    second = _run(tmp_path / "cache2", tmp_path / "out2", tmp_path / "out1" / "triton_cache.tgz")
    assert second.returncode == 0, second.stderr
    assert "# triton cache: restored" in second.stdout, second.stdout
    assert {name: (tmp_path / "cache2" / name).read_bytes() for name in contents} == contents
    for suffix in IR_SUFFIXES:  # the IR travels empty but present (Triton takes a group with a file missing for a miss)
        assert (tmp_path / "cache" / f"ABC/kernel.{suffix}").stat().st_size == 5000  # this machine's cache keeps it
        assert (tmp_path / "cache2" / f"ABC/kernel.{suffix}").read_bytes() == b""


def test_a_call_without_a_cache_returns_none(tmp_path):
    result = _run(tmp_path / "absent", tmp_path / "out", tmp_path / "none.tgz")
    assert result.returncode == 0, result.stderr
    assert "restored" not in result.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["scan-table.tgz"]


def test_a_torn_cache_is_dropped(tmp_path):
    """A packed cache cut short would restore a file cut short, which Triton would take for a hit: the call drops the
    whole restored cache and builds cold."""
    _fill(tmp_path / "cache", {"ABC/kernel.cubin": 1 << 20})
    assert _run(tmp_path / "cache", tmp_path / "out1", tmp_path / "none.tgz").returncode == 0
    packed = (tmp_path / "out1" / "triton_cache.tgz").read_bytes()
    (tmp_path / "torn.tgz").write_bytes(packed[: len(packed) // 2])
    result = _run(tmp_path / "cache2", tmp_path / "out2", tmp_path / "torn.tgz")
    assert result.returncode == 0, result.stderr
    assert "# triton cache: could not restore" in result.stdout, result.stdout
    assert not (tmp_path / "cache2").exists()
