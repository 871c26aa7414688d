"""The /metrics endpoint on a daemon's loop (runtime/metrics.MetricsServer), over loopback: the text
format prometheus-client's parser reads, the process's resident memory, and what a bad client or a
broken collector gets (never a stopped daemon)."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from ntmobile.runtime.driver import HandlerErrors
from ntmobile.runtime.metrics import REQUEST_MAX, DriverCollector, Family, Metrics, MetricsServer, counter_family


async def http(addr: tuple[str, int], request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection(*addr)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    if not data:
        return 0, {}, b""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def test_scrape_parse_and_bad_requests() -> None:
    errors = HandlerErrors()
    count = {"n": 0}
    broken = {"on": False}

    def fams() -> list[Family]:
        if broken["on"]:
            raise RuntimeError("collector bug")
        count["n"] += 1
        return [counter_family("ntm_test_things", "things", value=count["n"])]

    async def main() -> None:
        m = Metrics("test")
        m.add(fams)
        m.add(DriverCollector("test", lambda: {"received": 3}, lambda: errors.by_where))
        srv = MetricsServer(m, errors.record)
        await srv.start("127.0.0.1", 0)
        try:
            code, headers, body = await http(srv.address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert code == 200 and headers["Content-Type"].startswith("text/plain; version=")
            assert int(headers["Content-Length"]) == len(body)
            parsed = {f.name: f for f in text_string_to_metric_families(body.decode())}
            assert parsed["ntm_test_things"].samples[0].value == 1
            assert parsed["ntm_test_received_datagrams"].samples[0].value == 3
            assert parsed["ntm_process_resident_memory_bytes"].samples[0].value > 1 << 20
            # The next scrape reads the counters again.
            _, _, body = await http(srv.address, b"GET /metrics HTTP/1.0\r\n\r\n")
            assert "ntm_test_things_total 2\n" in body.decode()
            assert (await http(srv.address, b"GET / HTTP/1.0\r\n\r\n"))[0] == 404
            assert (await http(srv.address, b"POST /metrics HTTP/1.0\r\n\r\n"))[0] == 405
            # A request that never ends its headers within REQUEST_MAX: closed, counted.
            assert (await http(srv.address, b"GET /metrics HTTP/1.0\r\nX: " + b"a" * REQUEST_MAX))[0] == 0
            assert srv.bad_requests == 2
            # A collector that raises: 500, counted with the handler errors, the server goes on.
            broken["on"] = True
            assert (await http(srv.address, b"GET /metrics HTTP/1.0\r\n\r\n"))[0] == 500
            assert errors.by_where == {"metrics scrape": 1}
            broken["on"] = False
            code, _, body = await http(srv.address, b"GET /metrics HTTP/1.0\r\n\r\n")
            assert code == 200 and 'ntm_test_handler_errors_total{where="metrics scrape"} 1' in body.decode()
            assert srv.open == 0
        finally:
            srv.close()

    asyncio.run(main())
