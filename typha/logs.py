"""Log setup shared by `typha` and the agents: Calico's text layout (or one JSON object per line), a
bounded non-blocking writer, retry storms collapsed, a version line, one-line fatal errors; and `clip`
for text a peer chose, before it goes into a log line.

Typha writes logs from a bounded queue on a background goroutine and drops lines (counting them in
`typha_logs_dropped`) rather than block the process on a stalled stderr; errors while writing count in
`typha_log_errors` (docs/calico/typha.md §1). The same here: a stalled log pipe must never stall
the Sync server's event loop.
"""

from __future__ import annotations

import atexit
import contextlib
import difflib
import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata

# Attributes every LogRecord has; anything else was passed with `extra=` and is a structured field.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("text", "json")
# Lines waiting for the writer thread; beyond this they are dropped and counted (as Typha's 10,000-line
# buffer does), so a stalled stderr costs memory only up to this bound.
QUEUE_LINES = 10_000
# The reflectors back off up to 30 s (typha.kube.reflector.Backoff.maximum): one warning of each kind per
# such cycle says the API is unreachable as well as a hundred do.
REPEAT_WINDOW_SECS = 30.0



class LogCounts:
    """Lines dropped because the writer was blocked and errors while logging, since start. Plain numbers:
    the agents share this module and serve no metrics; the daemon exports them as Typha's
    `typha_logs_dropped` and `typha_log_errors` (typha.daemon.metrics_http)."""

    dropped = 0
    errors = 0


class SettingError(ValueError):
    """A setting an operator gave that cannot work: reported as one line naming setting, value and reason."""

    def __init__(self, setting: str, value: object, reason: str) -> None:
        self.setting, self.value, self.reason = setting, value, reason
        super().__init__(f"{setting}={value!r}: {reason}" if value is not None else f"{setting}: {reason}")


def clip(text: str, limit: int = 64) -> str:
    """`text` quoted and escaped (no newlines or terminal escapes from a peer), at most ~`limit` characters
    of it: a client's hostname of 64 KB must not make every log line about it 64 KB."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}…(+{len(text) - limit} chars)"


def version(distribution: str = "typha-py") -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def version_line(prog: str) -> str:
    return f"{prog} {version()} (Python {sys.version.split()[0]})"


class CalicoFormatter(logging.Formatter):
    """Calico's text layout (lib/logrusr Formatter): local time to the millisecond, level and pid, file and
    line, message, then `key=value` fields in key order with string values quoted:

        2026-12-08 00:00:00.000 [INFO][4242] serve.py 84: Serving syncers felix on port 5473 port=5473
    """

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        line = (f"{stamp} [{record.levelname}][{record.process}] {record.filename} {record.lineno}: "
                f"{record.getMessage()}")
        fields = sorted((key, value) for key, value in record.__dict__.items() if key not in _STANDARD)
        if fields:
            line += "".join(f" {key}={json.dumps(value) if isinstance(value, str) else value}"
                            for key, value in fields)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "file": record.filename,
            "line": record.lineno,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        entry.update((key, value) for key, value in record.__dict__.items() if key not in _STANDARD)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class CollapseRepeats(logging.Filter):
    """Lets one warning of each kind (logger and message template) through per window; the next one that
    passes says how many were held back. For retry storms: urllib3's "Retrying (…)" per request and the
    reflectors' "…; backing off" per resource say the same thing while the API server is away."""

    KINDS: tuple[tuple[str, str], ...] = (("urllib3.connectionpool", "Retrying"),
                                          ("typha.kube.reflector", "backing off"))

    def __init__(self, window_secs: float = REPEAT_WINDOW_SECS, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window_secs = window_secs
        self.clock = clock
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        template = str(record.msg)
        if not any(record.name.startswith(name) and marker in template for name, marker in self.KINDS):
            return True
        key = (record.name, template)
        now = self.clock()
        passed_at, held = self._last.get(key, (float("-inf"), 0))
        if now - passed_at < self.window_secs:
            self._last[key] = (passed_at, held + 1)
            return False
        self._last[key] = (now, 0)
        if held:
            record.msg = f"{template} ({held} similar suppressed in the last {self.window_secs:g} s)"
        return True


class _Writer(threading.Thread):
    """Writes formatted lines to the stream from a bounded queue, off the caller's thread."""

    def __init__(self, stream: object, lines: queue.Queue[str | None]) -> None:
        super().__init__(name="log-writer", daemon=True)
        self.stream = stream
        self.lines = lines

    def run(self) -> None:
        while (line := self.lines.get()) is not None:
            try:
                self.stream.write(line)  # type: ignore[attr-defined]
                self.stream.flush()  # type: ignore[attr-defined]
            except Exception:  # a closed or broken stderr: nothing to report it on
                LogCounts.errors += 1
            finally:
                self.lines.task_done()  # only now is the line out: flush() waits for this, not for get()


class NonBlockingHandler(logging.Handler):
    """Formats on the caller's thread (records hold live objects), writes on a writer thread; when the
    queue is full the line is dropped and counted rather than blocking the event loop."""

    def __init__(self, stream: object = None, capacity: int = QUEUE_LINES) -> None:
        super().__init__()
        self._lines: queue.Queue[str | None] = queue.Queue(maxsize=capacity)
        self._writer = _Writer(stream if stream is not None else sys.stderr, self._lines)
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:
            LogCounts.errors += 1
            return
        try:
            self._lines.put_nowait(line)
        except queue.Full:
            LogCounts.dropped += 1

    def close(self) -> None:
        """Flush what is queued (bounded wait), then stop the writer."""
        with contextlib.suppress(queue.Full):
            self._lines.put(None, timeout=2.0)
        self._writer.join(timeout=2.0)
        super().close()


_handler: NonBlockingHandler | None = None


def _close_handler() -> None:
    """Flush and stop the writer. Threads still logging (at exit, a reflector's last retry) then write
    synchronously in the same layout, rather than through logging's bare last-resort handler."""
    global _handler
    if _handler is not None:
        root = logging.getLogger()
        fallback = logging.StreamHandler(sys.stderr)
        fallback.setFormatter(_handler.formatter)
        for log_filter in _handler.filters:
            fallback.addFilter(log_filter)
        root.handlers[:] = [fallback if h is _handler else h for h in root.handlers]
        _handler.close()
        _handler = None


atexit.register(_close_handler)


def parse_level(value: str, setting: str = "LogSeverityScreen") -> int:
    """Typha's oneof values are case-insensitive (`info` from Calico's chart is INFO); FATAL and WARN are
    the Go spellings."""
    canonical = {"WARN": "WARNING", "FATAL": "CRITICAL", "PANIC": "CRITICAL"}.get(value.strip().upper(),
                                                                                  value.strip().upper())
    if canonical not in LEVELS:
        raise SettingError(setting, value, f"expected one of {', '.join(LEVELS)} (any case)")
    return int(getattr(logging, canonical))


def parse_format(value: str, setting: str = "--log-format") -> str:
    if value.strip().lower() not in FORMATS:
        raise SettingError(setting, value, f"expected one of {', '.join(FORMATS)}")
    return value.strip().lower()


def configure(level: str | int = "INFO", fmt: str = "text") -> None:
    """One handler on the root logger: Calico's text layout by default, JSON with fmt="json"."""
    global _handler
    _close_handler()
    handler = NonBlockingHandler()  # replaces the fallback _close_handler left
    handler.setFormatter(JsonFormatter() if parse_format(fmt) == "json" else CalicoFormatter())
    handler.addFilter(CollapseRepeats())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level if isinstance(level, int) else parse_level(level))
    _handler = handler


def flush() -> None:
    """Write out queued lines now (before printing a fatal line, so the order on stderr is kept)."""
    if _handler is not None:
        deadline = time.monotonic() + 2.0
        # unfinished_tasks counts lines queued or being written (the writer marks each done after writing).
        while _handler._lines.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)


def warn_unknown_env(environ: Mapping[str, str], prefix: str, known: Iterable[str], log: logging.Logger) -> None:
    """Once per unknown `<prefix>*` variable, with the closest known name: a typo must not pass silently."""
    known_names = sorted(set(known))
    for name in sorted(environ):
        if name.startswith(prefix) and name not in known_names:
            close = difflib.get_close_matches(name, known_names, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            log.warning("Ignoring unknown setting %s%s", name, hint, stacklevel=2)


def check_pem(setting: str, path: str, kind: str) -> None:
    """Raise SettingError naming `setting` unless `path` is a readable PEM "certificate" or "key": a typo in
    a TLS setting is one line at start, not a traceback (or "Failed to bind") later."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise SettingError(setting, path, exc.strerror or str(exc)) from None
    try:
        if kind == "certificate":
            from cryptography import x509

            x509.load_pem_x509_certificates(data)
        else:
            from cryptography.hazmat.primitives import serialization

            serialization.load_pem_private_key(data, password=None)
    except Exception as exc:  # each loader has its own error types; any of them means unusable
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise SettingError(setting, path, f"not a PEM {kind}: {reason[:200]}") from None


def check_client_tls(ca_file: str, cert_file: str, key_file: str) -> None:
    """The agents' Typha client files, under Felix's parameter names."""
    for setting, path, kind in (("TyphaCAFile", ca_file, "certificate"), ("TyphaCertFile", cert_file, "certificate"),
                                ("TyphaKeyFile", key_file, "key")):
        if path:
            check_pem(setting, path, kind)


# Exceptions that describe the world, not a bug: reported in one line. Anything else is a bug and keeps
# its traceback.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (SettingError, OSError, ConnectionError, TimeoutError)


def run_main(prog: str, body: Callable[[], int], expected: tuple[type[BaseException], ...] = ()) -> int:
    """Run a console script's body: an expected failure becomes one line `prog: reason` on stderr and exit
    code 1 (the traceback too at debug level); SIGPIPE on stdout (`| head`) ends quietly; Ctrl-C exits 130."""
    try:
        return int(body() or 0)
    except BrokenPipeError:
        # The reader went away (`| head`): nothing more to say, and Python's own flush at exit must not
        # complain either.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
    except BaseExceptionGroup as group:
        # trio and asyncio TaskGroups wrap what a task raised: one expected error inside is still one line.
        only = _sole_leaf(group)
        if only is None or not isinstance(only, (*EXPECTED_ERRORS, *expected)):
            raise
        return _report(prog, only)
    except (*EXPECTED_ERRORS, *expected) as exc:
        return _report(prog, exc)


def _sole_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else None


def _report(prog: str, exc: BaseException) -> int:
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger(prog).debug("%s failed", prog, exc_info=exc)
    flush()
    print(f"{prog}: {_one_line(exc)}", file=sys.stderr, flush=True)
    return 1


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    return " ".join(text.split())


