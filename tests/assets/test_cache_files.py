"""Cache files are verified like checkpoints: a checksum beside each; damage is named and recomputed;
a cache that cannot be written is a warning."""

import errno

from preftune.assets.cache import checksum_path, read_verified, write_verified
from tests.conftest import pickle_payload


def _write_text(text):
    return lambda tmp: tmp.write_text(text)


def test_a_verified_file_reads_back_and_its_checksum_is_sha256sum_format(tmp_path):
    path = tmp_path / "c" / "table.txt"
    assert write_verified(path, _write_text("hello"))
    digest, name = checksum_path(path).read_text().split()
    assert name == "table.txt" and len(digest) == 64
    assert read_verified(path, lambda p: p.read_text(), "table") == "hello"
    assert read_verified(tmp_path / "absent", lambda p: p.read_text(), "table") is None


def test_a_flipped_bit_or_a_missing_checksum_is_reported_with_the_path_and_nothing_is_returned(tmp_path):
    path = tmp_path / "table.txt"
    write_verified(path, _write_text("hello"))
    path.write_text("hellp")
    logs = []
    assert read_verified(path, lambda p: p.read_text(), "table", logs.append) is None
    assert f"the cache file {path} is damaged (its sha256 does not match" in logs[0]
    checksum_path(path).unlink()
    assert read_verified(path, lambda p: p.read_text(), "table", logs.append) is None
    assert "checksum file table.txt.sha256 is missing" in logs[1]


def test_an_unreadable_file_with_a_matching_checksum_is_reported_not_raised(tmp_path):
    path = tmp_path / "table.bin"
    marker = tmp_path / "payload-ran"
    write_verified(path, lambda tmp: tmp.write_bytes(pickle_payload(marker)))   # a planted, "verified" file

    def read_safetensors(p):
        from safetensors.torch import load_file

        return load_file(str(p))

    logs = []
    assert read_verified(path, read_safetensors, "table", logs.append) is None
    assert f"the cache file {path} is damaged (it cannot be read" in logs[0] and not marker.exists()


def test_a_cache_that_cannot_be_written_is_a_warning_and_leaves_nothing_half_written(tmp_path):
    def full(tmp):
        tmp.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    logs = []
    path = tmp_path / "table.bin"
    assert write_verified(path, full, logs.append) is False
    assert logs[0].startswith(f"warning: the cache was not saved — no space left on the device while writing {path}")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
