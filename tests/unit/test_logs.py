"""typha.logs: Calico's text layout, bounded non-blocking writing, retry storms collapsed, one-line errors."""

from __future__ import annotations

import io
import json
import logging
import re
import time

import pytest

from typha import logs


def record(msg: str, *args: object, name: str = "typha.x", level: int = logging.INFO, **extra: object):
    rec = logging.LogRecord(name, level, "/src/typha/daemon/serve.py", 84, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_text_layout_is_calicos():
    """`2026-12-08 00:00:00.000 [INFO][pid] file.py 123: msg k=v`, fields sorted, strings quoted (logrusr)."""
    line = logs.CalicoFormatter().format(record("Serving %s", "felix", port=5473, host="0.0.0.0"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \[INFO\]\[\d+\] serve\.py 84: "
                        r'Serving felix host="0\.0\.0\.0" port=5473', line), line


def test_json_layout_has_the_fields():
    entry = json.loads(logs.JsonFormatter().format(record("hello", port=1)))
    assert {"time", "level", "logger", "msg", "file", "line", "pid", "port"} <= entry.keys()
    assert (entry["level"], entry["msg"], entry["port"]) == ("info", "hello", 1)


def test_levels_take_any_case_and_gos_names():
    assert logs.parse_level("info") == logging.INFO
    assert logs.parse_level("Warn") == logging.WARNING
    assert logs.parse_level("FATAL") == logging.CRITICAL
    with pytest.raises(logs.SettingError, match="LogSeverityScreen='loud'"):
        logs.parse_level("loud")


def test_retry_warnings_collapse_to_one_per_kind_per_window():
    now = [0.0]
    collapse = logs.CollapseRepeats(window_secs=30, clock=lambda: now[0])
    retry = "Retrying (%r) after connection broken by '%r': %s"

    def passes(name: str, msg: str) -> bool:
        return collapse.filter(record(msg, name=name, level=logging.WARNING))

    assert passes("urllib3.connectionpool", retry)
    assert not any(passes("urllib3.connectionpool", retry) for _ in range(100))
    assert passes("typha.kube.reflector", "%s: %s; backing off")  # another kind has its own window
    assert passes("typha.other", "unrelated")  # other warnings are never held back
    now[0] = 31.0
    rec = record(retry, name="urllib3.connectionpool", level=logging.WARNING)
    assert collapse.filter(rec)
    assert "(100 similar suppressed in the last 30 s)" in str(rec.msg)


def test_a_blocked_stream_drops_and_counts_instead_of_blocking():
    class Stalled(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.gate = __import__("threading").Event()

        def write(self, text: str) -> int:
            self.gate.wait(10)
            return super().write(text)

    stream = Stalled()
    handler = logs.NonBlockingHandler(stream, capacity=5)
    handler.setFormatter(logging.Formatter("%(message)s"))
    before = logs.LogCounts.dropped
    started = time.monotonic()
    for i in range(50):
        handler.emit(record(f"line {i}"))
    elapsed = time.monotonic() - started
    assert logs.LogCounts.dropped - before >= 40  # 5 queued, 1 in the writer's hands, the rest dropped
    stream.gate.set()
    handler.close()
    assert "line 0" in stream.getvalue()
    assert elapsed < 5, "emit blocked on the stalled stream"


def test_run_main_turns_expected_errors_into_one_line(capsys):
    def fail() -> int:
        raise logs.SettingError("ServerPort", 99999, "a port is 1-65535")

    assert logs.run_main("typha", fail) == 1
    err = capsys.readouterr().err
    assert err == "typha: ServerPort=99999: a port is 1-65535\n"


def test_run_main_unwraps_a_single_error_from_a_task_group(capsys):
    def fail() -> int:
        raise BaseExceptionGroup("tasks", [ExceptionGroup("inner", [FileNotFoundError(2, "No such file", "/x")])])

    assert logs.run_main("felix-client", fail) == 1
    assert capsys.readouterr().err == "felix-client: /x: No such file\n"


def test_run_main_keeps_tracebacks_for_bugs():
    def bug() -> int:
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        logs.run_main("typha", bug)
