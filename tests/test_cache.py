"""The cache root: one folder, a size limit that evicts the least recently used files, clearing."""
import os

import pytest

from classifier import cache
from classifier.errors import ClassifierError


def _write(path, size: int, age: int):
    path.write_bytes(b"x" * size)
    os.utime(path, (1_000_000 + age, 1_000_000 + age))
    return path


def test_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CLASSIFIER_CACHE", str(tmp_path / "c"))
    assert cache.cache_dir("decoded", "x") == tmp_path / "c" / "decoded" / "x"
    assert (tmp_path / "c" / "decoded" / "x").is_dir()
    monkeypatch.delenv("CLASSIFIER_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_root() == tmp_path / "home" / ".cache" / "classifier"


def test_limit_evicts_least_recently_used_and_keeps_the_new_file(tmp_path, monkeypatch):
    monkeypatch.setenv("CLASSIFIER_CACHE", str(tmp_path))
    folder = cache.cache_dir("decoded")
    old, mid, new = (_write(folder / n, 400, age) for n, age in (("old", 1), ("mid", 2), ("new", 3)))
    cache.touch(old)  # used just now: the least recently used is now "mid"
    assert cache.enforce_limit(keep=new, max_bytes=900) == 400
    assert old.exists() and new.exists() and not mid.exists()
    assert cache.enforce_limit(keep=new, max_bytes=100) == 400  # the file just written stays
    assert new.exists() and not old.exists()


def test_size_usage_describe_and_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("CLASSIFIER_CACHE", str(tmp_path))
    _write(cache.cache_dir("decoded") / "a.npz", 3000, 1)
    _write(cache.cache_dir("checks") / "b.json", 1000, 1)
    assert cache.cache_size() == 4000 and cache.cache_usage() == {"decoded": 3000, "checks": 1000}
    monkeypatch.setenv("CLASSIFIER_CACHE_MAX_GB", "0.5")
    line = cache.describe_cache()
    assert str(tmp_path) in line and "3.9 kB" in line and "512.0 MB" in line and "clear_cache" in line
    assert cache.clear_cache("checks") == 1000 and cache.cache_size() == 3000
    assert cache.clear_cache() == 3000 and cache.cache_size() == 0


def test_bad_limit_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("CLASSIFIER_CACHE_MAX_GB", "lots")
    with pytest.raises(ClassifierError, match="CLASSIFIER_CACHE_MAX_GB='lots'"):
        cache.max_cache_bytes()
