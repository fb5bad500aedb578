"""typha.daemon.httpd, as the health probes and /metrics use it: status, body, HEAD, unknown paths and methods."""

from __future__ import annotations

import asyncio

from typha.daemon.health import HealthEndpoints


async def _request(port: int, line: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(line + b"\r\nHost: x\r\nUser-Agent: kube-probe/1.30\r\nAccept: */*\r\n\r\n")
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 10)  # the server closes after one answer
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (h.partition(":") for h in header_lines)}
    return int(status_line.split(" ")[1]), headers, body


def test_health_answers_probes_with_the_checks_verdict() -> None:
    state = {"ready": (False, "not in sync: felix")}

    async def main() -> list[tuple[int, dict[str, str], bytes]]:
        health = HealthEndpoints(ready=lambda: state["ready"], live=lambda: (True, "live"))
        port = await health.start("127.0.0.1", 0)
        try:
            answers = [await _request(port, b"GET /readiness HTTP/1.1"),
                       await _request(port, b"GET /liveness?verbose=1 HTTP/1.1")]
            state["ready"] = (True, "ready")
            answers += [await _request(port, b"GET /readiness HTTP/1.1"),
                        await _request(port, b"HEAD /readiness HTTP/1.1"),
                        await _request(port, b"GET /metrics HTTP/1.1"),
                        await _request(port, b"POST /readiness HTTP/1.1")]
        finally:
            await health.stop()
        return answers

    not_ready, live, ready, head, unknown, post = asyncio.run(main())
    assert (not_ready[0], not_ready[2]) == (503, b"not in sync: felix\n")
    assert not_ready[1]["content-length"] == str(len(not_ready[2]))
    assert not_ready[1]["connection"] == "close"
    assert (live[0], live[2]) == (200, b"live\n")
    assert (ready[0], ready[2]) == (200, b"ready\n")
    assert (head[0], head[2], head[1]["content-length"]) == (200, b"", "6")
    assert unknown[0] == 404
    assert post[0] == 405


def test_a_port_in_use_is_an_oserror_for_the_caller_to_name() -> None:
    async def main() -> None:
        first = HealthEndpoints(ready=lambda: (True, ""), live=lambda: (True, ""))
        port = await first.start("127.0.0.1", 0)
        try:
            second = HealthEndpoints(ready=lambda: (True, ""), live=lambda: (True, ""))
            try:
                await second.start("127.0.0.1", port)
            except OSError:
                return
            await second.stop()
            raise AssertionError("bound a port that is in use")
        finally:
            await first.stop()

    asyncio.run(main())
