"""A Python client generated from the served OpenAPI document (openapi-python-client) places a signed
order as a demo household and reads a settled slot's report with the demo utility's key; both answers
parse into the generated typed models, with no field the document does not name.

Started by .ci/schemathesis.sh (before schemathesis, which changes the demo's data) with GRIDEX_BASE,
GRIDEX_CLIENT_SEED (a household's account key, hex; another household than schemathesis signs for)
and GRIDEX_UTILITY_KEY.
"""
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

import attrs

from gridex_signing import HttpxAuth, Trader

BASE = os.environ["GRIDEX_BASE"]
ZONE = "demo"
# The demo settles a slot about three slots after it ends; at the CI speed (60×) a slot is 15 s.
REPORT_TIMEOUT_S = 180


def generate_client():
    """Generates the client package `gridex_client` from the live document into a temporary folder."""
    folder = tempfile.mkdtemp(prefix="gridex-client-")
    document = os.path.join(folder, "openapi.json")
    with urllib.request.urlopen(f"{BASE}/api/v1/openapi.json") as response, open(document, "wb") as out:
        out.write(response.read())
    subprocess.run(
        ["openapi-python-client", "generate", "--path", document, "--meta", "none",
         "--output-path", os.path.join(folder, "gridex_client")],
        check=True,
    )
    sys.path.insert(0, folder)
    return importlib.import_module("gridex_client")


gridex_client = generate_client()
from gridex_client import AuthenticatedClient, Client  # noqa: E402
from gridex_client.api.public import get_api_v1_clock, get_api_v1_zones_zone_slots, get_api_v1_zones_zone_tariffs  # noqa: E402
from gridex_client.api.trader import post_api_v1_orders  # noqa: E402
from gridex_client.api.utility import get_api_v1_reports_zone_slot  # noqa: E402
from gridex_client.models import Error, OrderReply, Side, SignedOrder, SlotReport, TimeInForce  # noqa: E402


def no_unnamed_fields(model):
    """The model and every model inside it hold only fields the document names."""
    extra = getattr(model, "additional_properties", {})
    assert extra == {}, f"{type(model).__name__} has fields the document does not name: {sorted(extra)}"
    for field in attrs.fields(type(model)):
        value = getattr(model, field.name)
        for item in value if isinstance(value, list) else [value]:
            if hasattr(item, "to_dict"):
                no_unnamed_fields(item)


def test_a_generated_client_places_a_signed_order_and_reads_a_settlement_report():
    public = Client(base_url=BASE)
    trader = Trader(os.environ["GRIDEX_CLIENT_SEED"])
    signed = Client(base_url=BASE, httpx_args={"auth": HttpxAuth(trader)})
    utility = AuthenticatedClient(base_url=BASE, token=os.environ["GRIDEX_UTILITY_KEY"])

    clock = get_api_v1_clock.sync(client=public)
    tariff = get_api_v1_zones_zone_tariffs.sync(ZONE, client=public)[-1]
    # The next open slot whose gate is far enough away for the order to arrive before it closes.
    slots = get_api_v1_zones_zone_slots.sync(ZONE, client=public)
    slot = min(s.slot for s in slots if s.state == "open" and s.gate_closure_ms > clock.now_ms + 120_000)
    # A small buy at the feed-in price: inside the zone's band, and below what the demo homes sell at,
    # so it rests (or fills) rather than being refused.
    order = trader.sign_command({
        "type": "order", "account": trader.account, "zone": ZONE, "slot": slot, "side": "buy",
        "price_per_kwh": tariff.feed_in_price_per_kwh, "qty_wh": 100, "tif": "gtc", "post_only": False,
        "nonce": trader.next_nonce(), "ts_ms": clock.now_ms,
    })
    body = SignedOrder.from_dict(order)
    assert (body.side, body.tif) == (Side.BUY, TimeInForce.GTC)
    placed = post_api_v1_orders.sync_detailed(client=signed, body=body)
    assert placed.status_code == 201, placed.content
    reply = placed.parsed
    assert isinstance(reply, OrderReply), placed.content
    no_unnamed_fields(reply)
    assert reply.status == "accepted"
    assert reply.order_nonce == order["nonce"]
    assert reply.updates[0].slot == slot and reply.updates[0].account == trader.account

    # The first slot with a report: the demo settles a slot a few slots after its end.
    report = None
    deadline = time.monotonic() + REPORT_TIMEOUT_S
    while report is None and time.monotonic() < deadline:
        now_ms = get_api_v1_clock.sync(client=public).now_ms
        current = now_ms - now_ms % 900_000
        for back in range(1, 9):
            answer = get_api_v1_reports_zone_slot.sync_detailed(ZONE, current - back * 900_000, client=utility)
            if answer.status_code == 200:
                report = answer
                break
            assert answer.status_code == 404 and isinstance(answer.parsed, Error), answer.content
            assert answer.parsed.error == "slot_not_settled"
        else:
            time.sleep(1)
    assert report is not None, f"no slot of {ZONE} settled within {REPORT_TIMEOUT_S} s"
    parsed = report.parsed
    assert isinstance(parsed, SlotReport), report.content
    no_unnamed_fields(parsed)
    assert parsed.zone == ZONE
    assert parsed.statements, "a settled demo slot has a statement per household"
    assert parsed.totals.statements == len(parsed.statements)
    # The typed model holds every field of the JSON as it came (nothing dropped on the way).
    assert parsed.to_dict() == json.loads(report.content)
