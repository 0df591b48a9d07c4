"""Sizes in useful units, a full disk named as such, damaged weight files named."""

import errno

import pytest

from preftune.storage import damaged_safetensors, describe_write_error, format_bytes, is_out_of_space


@pytest.mark.parametrize("n, shown", [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (3.2 * 2**20, "3.2 MiB"),
                                      (150 * 2**20, "150 MiB"), (1.5 * 2**30, "1.5 GiB"), (2**42, "4 TiB")])
def test_sizes_are_printed_in_the_largest_unit_that_keeps_a_number_above_one(n, shown):
    assert format_bytes(n) == shown


def test_a_full_disk_is_recognised_in_every_writer_s_words(tmp_path):
    assert is_out_of_space(OSError(errno.ENOSPC, "No space left on device"))
    assert is_out_of_space(OSError(errno.EDQUOT, "Disk quota exceeded"))
    wrapped = RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 320 vs 256")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert is_out_of_space(wrapped)
    assert not is_out_of_space(PermissionError(errno.EACCES, "Permission denied"), tmp_path)
    assert describe_write_error(OSError(errno.ENOSPC, "x"), tmp_path / "f").startswith(
        f"no space left on the device while writing {tmp_path / 'f'} (")
    assert describe_write_error(PermissionError(errno.EACCES, "Permission denied"), tmp_path / "f") == (
        f"cannot write {tmp_path / 'f'} (PermissionError: [Errno 13] Permission denied)")


def test_a_truncated_or_foreign_safetensors_file_is_named(tmp_path):
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.ones(64)}, str(tmp_path / "a.safetensors"))
    assert damaged_safetensors(tmp_path) is None
    data = (tmp_path / "a.safetensors").read_bytes()
    (tmp_path / "b.safetensors").write_bytes(data[:len(data) // 2])
    assert damaged_safetensors(tmp_path).startswith(f"{tmp_path / 'b.safetensors'} is not a complete safetensors")
