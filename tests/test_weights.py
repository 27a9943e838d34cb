import hashlib
import shutil
from dataclasses import replace

import pytest

from edgeseg.errors import EdgesegError
from edgeseg.zoo.registry import get_entry
from edgeseg.zoo.weights import resolve_weights

ENTRY = get_entry("deeplabv3_mnv2_dm05_voc")


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    home, mirror = tmp_path / "home", tmp_path / "mirror"
    mirror.mkdir()
    monkeypatch.setenv("EDGESEG_HOME", str(home))
    monkeypatch.setenv("EDGESEG_MIRROR", str(mirror))
    return home, mirror


def test_cache_comes_before_mirror(dirs, dm05_official):
    home, mirror = dirs
    home.mkdir()
    shutil.copy(dm05_official, home / ENTRY.weights.filename)
    shutil.copy(dm05_official, mirror / ENTRY.weights.filename)
    assert resolve_weights(ENTRY.weights) == home / ENTRY.weights.filename


def test_mirror_is_used_verified_and_copied_into_the_cache(dirs, dm05_official, monkeypatch):
    home, mirror = dirs
    shutil.copy(dm05_official, mirror / ENTRY.weights.filename)
    # Found in the mirror, the file is copied into the cache: a later command without the mirror finds it.
    assert resolve_weights(ENTRY.weights) == home / ENTRY.weights.filename
    assert (home / ENTRY.weights.filename).read_bytes() == dm05_official.read_bytes()
    monkeypatch.delenv("EDGESEG_MIRROR")
    assert resolve_weights(ENTRY.weights, download=False) == home / ENTRY.weights.filename
    (home / ENTRY.weights.filename).unlink()
    monkeypatch.setenv("EDGESEG_MIRROR", str(mirror))
    (mirror / ENTRY.weights.filename).write_bytes(b"tampered")
    with pytest.raises(EdgesegError, match="checksum mismatch"):
        resolve_weights(ENTRY.weights)
    assert not (home / ENTRY.weights.filename).exists()  # a bad mirror file never reaches the cache


def test_an_unwritable_cache_still_uses_the_mirror(dirs, dm05_official):
    home, mirror = dirs
    home.write_text("a file where the cache folder should be")
    shutil.copy(dm05_official, mirror / ENTRY.weights.filename)
    assert resolve_weights(ENTRY.weights) == mirror / ENTRY.weights.filename


def test_offline_error_names_url_and_both_variables(dirs):
    weights = replace(ENTRY.weights, url="http://127.0.0.1:9/nothing-listens-here.tflite")
    with pytest.raises(EdgesegError) as info:
        resolve_weights(weights)
    message = str(info.value)
    assert weights.url in message and "EDGESEG_HOME" in message and "EDGESEG_MIRROR" in message
    assert "\n" not in message


def test_download_checks_sha256_and_renames_atomically(dirs, dm05_official):
    home, _ = dirs
    weights = replace(ENTRY.weights, url=dm05_official.as_uri())
    path = resolve_weights(weights)
    assert path == home / weights.filename
    assert hashlib.sha256(path.read_bytes()).hexdigest() == weights.sha256
    assert sorted(p.name for p in home.iterdir()) == [weights.filename]


def test_download_with_wrong_checksum_leaves_nothing_in_cache(dirs, dm05_official):
    home, _ = dirs
    weights = replace(ENTRY.weights, url=dm05_official.as_uri(), sha256="0" * 64)
    with pytest.raises(EdgesegError, match="checksum mismatch"):
        resolve_weights(weights)
    assert list(home.iterdir()) == []
