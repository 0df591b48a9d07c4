import errno

import pytest

from preftune.errors import DataError
from preftune.train.metrics import MetricsLogger, MetricsWriteError, read_metrics


def test_fresh_run_starts_a_new_file_and_resume_drops_steps_after_the_checkpoint(tmp_path):
    first = MetricsLogger(tmp_path, report_to="none")
    for step in (1, 2, 3, 4):
        first.log(step, {"loss": float(step)})
    first.log(2, {"loss": 0.5}, split="eval")
    first.close()
    resumed = MetricsLogger(tmp_path, report_to="none", resume_step=2)   # crashed after step 4, saved at 2
    resumed.log(3, {"loss": 30.0})
    resumed.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl", "train")] == [
        (1, 1.0), (2, 2.0), (3, 30.0)]
    assert len(read_metrics(tmp_path / "metrics.jsonl", "eval")) == 1
    fresh = MetricsLogger(tmp_path, report_to="none")
    fresh.log(1, {"loss": 9.0})
    fresh.close()
    assert [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [9.0]


def _three_steps(folder):
    logger = MetricsLogger(folder, report_to="none")
    for step in (1, 2, 3):
        logger.log(step, {"loss": float(step)})
    logger.close()
    return folder / "metrics.jsonl"


def test_resume_never_truncates_the_log_in_place(tmp_path, monkeypatch):
    # Old behaviour: the log was reopened with "w" and refilled through a buffer, so a crash right after
    # "resumed from" left it empty. Now the kept records reach a temporary file that replaces the log in
    # one rename: a crash before the rename leaves the old log whole.
    path = _three_steps(tmp_path)
    before = path.read_bytes()
    from preftune.train import metrics

    def crash(*args):
        raise KeyboardInterrupt("killed between writing the copy and the rename")

    monkeypatch.setattr(metrics.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        MetricsLogger(tmp_path, report_to="none", resume_step=2)
    assert path.read_bytes() == before
    monkeypatch.undo()
    resumed = MetricsLogger(tmp_path, report_to="none", resume_step=2)
    resumed.close()
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_a_torn_last_line_is_dropped_and_reported(tmp_path):
    path = _three_steps(tmp_path)
    path.write_bytes(path.read_bytes() + b'{"step": 4, "split": "tra')          # killed mid-write
    with pytest.warns(UserWarning, match=r"metrics.jsonl: line 4 is torn"):
        assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    logs = []
    resumed = MetricsLogger(tmp_path, report_to="none", resume_step=3, log=logs.append)
    resumed.log(4, {"loss": 4.0})
    resumed.close()
    assert "line 4 is torn" in logs[0]
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4]


def test_a_damaged_line_in_the_middle_is_an_error_naming_file_and_line(tmp_path):
    # Old behaviour: a bare JSONDecodeError traceback from every later resume.
    path = _three_steps(tmp_path)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + '{"step": 2, "spl\n' + lines[2])
    with pytest.raises(DataError, match=rf"{path}:2: damaged record"):
        read_metrics(path)
    with pytest.raises(DataError, match=rf"{path}:2: damaged record"):
        MetricsLogger(tmp_path, report_to="none", resume_step=3)


def test_a_complete_last_record_without_its_newline_is_kept_and_the_next_record_starts_a_new_line(tmp_path):
    path = _three_steps(tmp_path)
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    resumed = MetricsLogger(tmp_path, report_to="none", resume_step=3)
    resumed.log(4, {"loss": 4.0})
    resumed.close()
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4]


def test_a_failed_append_says_so_naming_the_file(tmp_path, monkeypatch):
    logger = MetricsLogger(tmp_path, report_to="none")

    class Full:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            pass

    logger._file = Full()
    with pytest.raises(MetricsWriteError, match=rf"no space left on the device while writing {tmp_path}/metrics.jsonl"):
        logger.log(1, {"loss": 1.0})
