from __future__ import annotations

import os
import time

import numpy as np

from mammobench.data.cache import CacheRequest, ImageCache
from mammobench.data.preprocess import PreprocessSettings, load_and_preprocess

from .conftest import fake_mammogram, write_png


def test_build_reuse_and_match_direct(tmp_path):
    img = write_png(tmp_path / "a.png", fake_mammogram())
    settings = PreprocessSettings(size=48)
    cache = ImageCache(tmp_path / "cache", settings)
    req = CacheRequest(str(img))
    first = cache.build([req], workers=1)
    assert (first.built, first.reused, first.failed) == (1, 0, [])
    again = cache.build([req], workers=1)
    assert (again.built, again.reused) == (0, 1)
    cached = cache.get(req)
    direct = load_and_preprocess(str(img), settings)
    assert cached.shape == (48, 48)
    np.testing.assert_allclose(cached, direct, atol=1 / 65535)  # stored as 16-bit


def test_settings_change_and_source_change_rebuild(tmp_path):
    img = write_png(tmp_path / "a.png", fake_mammogram())
    req = CacheRequest(str(img))
    a = ImageCache(tmp_path / "cache", PreprocessSettings(size=48))
    b = ImageCache(tmp_path / "cache", PreprocessSettings(size=48, clahe=True))
    assert a.folder != b.folder
    a.build([req], workers=1)
    assert b.build([req], workers=1).built == 1
    before = a.entry_path(req)
    write_png(img, fake_mammogram(seed=5))
    os.utime(img, (time.time() + 10, time.time() + 10))
    assert a.entry_path(req) != before
    assert a.build([req], workers=1).built == 1


def test_unreadable_images_are_reported_not_raised(tmp_path):
    good = write_png(tmp_path / "good.png", fake_mammogram())
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    cache = ImageCache(tmp_path / "cache", PreprocessSettings(size=32))
    report = cache.build([CacheRequest(str(good)), CacheRequest(str(bad)), CacheRequest(str(tmp_path / "gone.png"))], workers=2)
    assert report.built == 1
    assert [(i, p) for i, p, _ in report.failed] == [(1, str(bad)), (2, str(tmp_path / "gone.png"))]
    reasons = {i: r for i, _, r in report.failed}
    assert "corrupt" in reasons[1] or "not a recognised" in reasons[1]
    assert "does not exist" in reasons[2]


def test_damaged_entry_is_rebuilt(tmp_path):
    img = write_png(tmp_path / "a.png", fake_mammogram())
    cache = ImageCache(tmp_path / "cache", PreprocessSettings(size=32))
    req = CacheRequest(str(img))
    cache.build([req], workers=1)
    good = cache.get(req).copy()
    entry = cache.entry_path(req)
    entry.write_bytes(b"garbage")
    again = cache.get(req)
    assert again.shape == (32, 32) and np.array_equal(again, good)  # decoded again, the same pixels
    assert entry.read_bytes() != b"garbage" and np.array_equal(cache.get(req), good)  # and the entry rewritten
    entry.write_bytes(entry.read_bytes()[: len(entry.read_bytes()) // 2])  # a write cut short: also rebuilt
    assert np.array_equal(cache.get(req), good)
