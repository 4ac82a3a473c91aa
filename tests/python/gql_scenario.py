"""Verdict through Python's gql 4 (AIOHTTPTransport for the mutation, WebsocketsTransport
for the subscription), driven by tests/node/gql-python.test.mjs.

    python gql_scenario.py basic  HTTP_URL WS_URL [SUBPROTOCOL...]
    python gql_scenario.py sigterm HTTP_URL WS_URL

Prints one JSON object per line; `basic` ends with {"result": ...}; `sigterm` prints
{"ready": true} once six subscriptions are under way (the test then restarts the server),
then {"result": ...}. With no SUBPROTOCOL the transport's default offer is used
(graphql-ws first, then graphql-transport-ws). `--patch-header-case` works around gql's
case-sensitive reading of the Sec-WebSocket-Protocol answer (see _headers_any_case).
"""

import asyncio
import json
import sys
import time

from gql import Client, gql
from gql.transport.aiohttp import AIOHTTPTransport
from gql.transport.common.adapters.websockets import WebSocketsAdapter
from gql.transport.websockets import WebsocketsTransport


def _headers_any_case(self):
    """gql 4.0.0 looks the negotiated subprotocol up as `Sec-WebSocket-Protocol`, case
    sensitively (a dict of the raw items); hyper, like most HTTP/1.1 servers, writes header
    names in lower case, which HTTP allows. gql then assumes the legacy protocol and sends
    `start`, and a graphql-transport-ws server closes with 4400. Its default offer
    (graphql-ws first) only works because the fallback happens to be right. This patch
    reads the header in any case, which is what gql means to do."""
    raw = dict(self._response_headers.raw_items()) if self._response_headers else {}
    for name, value in list(raw.items()):
        if name.lower() == "sec-websocket-protocol":
            raw["Sec-WebSocket-Protocol"] = value
    return raw


if "--patch-header-case" in sys.argv:
    WebSocketsAdapter.response_headers = property(_headers_any_case)

SUBMIT = "mutation($i: SubmitInput!){ submit(input:$i){ id } }"
EVENTS = """subscription($id: ID!, $afterSeq: Int){
  submissionEvents(id:$id, afterSeq:$afterSeq){
    __typename seq
    ... on FinishedEvent { submission { verdict } }
  }
}"""
HELLO = {"language": "python3", "source": "print('one')\nprint('two')"}
SLOW = {
    "language": "python3",
    "source": "import time\nfor i in range(10):\n    print(i, flush=True)\n    time.sleep(0.4)\n",
}


def emit(obj):
    print(json.dumps(obj), flush=True)


async def submit(http, source):
    async with Client(transport=AIOHTTPTransport(url=http)) as session:
        request = gql(SUBMIT)
        request.variable_values = {"i": source}
        return (await session.execute(request))["submit"]["id"]


async def watch(session, sid, after=None, on_event=None):
    """Events of one subscription on `session`, in order, with the time of the first."""
    request = gql(EVENTS)
    request.variable_values = {"id": sid, "afterSeq": after}
    events, first, t0 = [], None, time.monotonic()
    async for result in session.subscribe(request):
        first = first if first is not None else (time.monotonic() - t0) * 1000
        ev = result["submissionEvents"]
        events.append(ev)
        if on_event:
            on_event(ev)
    return events, first


def whole(events):
    seqs = [e["seq"] for e in events]
    return seqs == list(range(1, len(seqs) + 1)) and events[-1]["__typename"] == "FinishedEvent"


async def basic(http, ws, subprotocols):
    kwargs = {"subprotocols": subprotocols} if subprotocols else {}
    sid = await submit(http, HELLO)
    transport = WebsocketsTransport(url=ws, **kwargs)
    async with Client(transport=transport) as session:
        events, _ = await watch(session, sid)
        chosen = transport.subprotocol
    # A resubscribe at once, on a new connection (the previous one is closing now).
    async with Client(transport=WebsocketsTransport(url=ws, **kwargs)) as session:
        again, first_ms = await watch(session, sid)
        ids = [await submit(http, HELLO) for _ in range(20)]
        many = await asyncio.gather(*(watch(session, i) for i in ids))
    emit({"result": {
        "subprotocol": chosen,
        "whole": whole(events),
        "verdict": events[-1].get("submission", {}).get("verdict"),
        "resubscribe_whole": whole(again),
        "resubscribe_first_event_ms": round(first_ms, 1),
        "concurrent_whole": sum(1 for ev, _ in many if whole(ev)),
    }})


async def follow(ws, sid, state):
    """Follows one submission across server restarts, as an app would: on a closed
    connection, reconnect and resubscribe after the last seq seen."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            async with Client(transport=WebsocketsTransport(url=ws)) as session:
                after = state["events"][-1]["seq"] if state["events"] else None
                await watch(session, sid, after, lambda ev: state["events"].append(ev))
                return
        except Exception as e:  # noqa: BLE001 - any transport failure means: reconnect
            state["closes"].append(type(e).__name__ + ": " + str(e)[:80])
            await asyncio.sleep(0.15)


async def sigterm(http, ws):
    ids = [await submit(http, SLOW) for _ in range(6)]
    states = [{"events": [], "closes": []} for _ in ids]
    tasks = [asyncio.create_task(follow(ws, i, s)) for i, s in zip(ids, states)]
    while not all(any(e["__typename"] == "OutputEvent" for e in s["events"]) for s in states):
        await asyncio.sleep(0.02)
    emit({"ready": True})
    await asyncio.gather(*tasks)
    emit({"result": {
        "whole": sum(1 for s in states if s["events"] and whole(s["events"])),
        "closes": [s["closes"] for s in states],
        "seqs": [[e["seq"] for e in s["events"]] for s in states],
    }})


def main():
    mode, http, ws, *rest = [a for a in sys.argv[1:] if a != "--patch-header-case"]
    if mode == "basic":
        asyncio.run(basic(http, ws, rest))
    else:
        asyncio.run(sigterm(http, ws))


if __name__ == "__main__":
    main()
