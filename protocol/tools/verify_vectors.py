#!/usr/bin/env python3
"""Independent check of protocol/test-vectors.json, written from PROTOCOL.md alone.

It shares no code with the Rust crate: its own canonical JSON (RFC 8785 for our restricted value
set), its own field tables, and libsodium's ed25519 (through PyNaCl) instead of ed25519-dalek.
Valid vectors must produce exactly `signing_bytes_hex` and verify; invalid ones must fail with their
`reason`. Usage: python3 protocol/tools/verify_vectors.py [protocol/test-vectors.json]
Needs: pip install pynacl. `cargo test -p protocol --test libsodium_vectors` runs it (skipped when
Python or PyNaCl is missing, unless GRIDEX_REQUIRE_TOOLS is set, as in CI).
"""
import json
import re
import sys

import nacl.bindings
import nacl.exceptions
import nacl.signing

SIZE_MAX = 1024  # PROTOCOL.md: signed messages from gateways and traders
PLAN_SIZE_MAX = 8 * 1024  # PROTOCOL.md 4.7: a battery plan of up to 96 slots
PLAN_SLOTS_MAX = 96
OUTBOUND_SIZE_MAX = 16 * 1024  # PROTOCOL.md: messages the exchange publishes
MAX_SAFE = 2**53 - 1
HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEX128 = re.compile(r"^[0-9a-f]{128}$")

def _plan_slots(value):
    """PROTOCOL.md 4.7: at most 96 entries of {slot, charge_wh, soc_permille_end}, slots increasing."""
    if not isinstance(value, list) or len(value) > PLAN_SLOTS_MAX:
        return False
    for entry in value:
        if not isinstance(entry, dict) or set(entry) != {"slot", "charge_wh", "soc_permille_end"}:
            return False
        if not (_int(0)(entry["slot"]) and _int()(entry["charge_wh"]) and abs(entry["charge_wh"]) <= 10**9
                and _int(0)(entry["soc_permille_end"]) and entry["soc_permille_end"] <= 1000):
            return False
    return all(a["slot"] < b["slot"] for a, b in zip(value, value[1:]))


# PROTOCOL.md field tables: name -> (required, checker)
def _int(lo=None):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and (lo is None or v >= lo)

_str = lambda v: isinstance(v, str)
_bool = lambda v: isinstance(v, bool)
_key = lambda v: isinstance(v, str) and HEX64.match(v) is not None
_side = lambda v: v in ("buy", "sell")
_tif = lambda v: v in ("gtc", "ioc", "fok")

FIELDS = {
    "reading": {"device": (True, _key), "zone": (True, _str), "meter_serial": (True, _str), "seq": (True, _int(0)),
                "ts_ms": (True, _int(0)), "import_wh": (True, _int(0)), "export_wh": (True, _int(0)),
                "pv_wh": (False, _int(0)), "power_w": (True, _int())},
    "order": {"account": (True, _key), "zone": (True, _str), "slot": (True, _int(0)), "side": (True, _side),
              "price_per_kwh": (True, _int(1)), "qty_wh": (True, _int(1)), "tif": (True, _tif),
              "post_only": (True, _bool), "nonce": (True, _int(0)), "ts_ms": (True, _int(0))},
    "cancel": {"account": (True, _key), "zone": (True, _str), "slot": (True, _int(0)), "order_nonce": (True, _int(0)),
               "nonce": (True, _int(0)), "ts_ms": (True, _int(0))},
    "replace": {"account": (True, _key), "zone": (True, _str), "slot": (True, _int(0)),
                "order_nonce": (True, _int(0)), "price_per_kwh": (True, _int(1)), "qty_wh": (True, _int(1)),
                "nonce": (True, _int(0)), "ts_ms": (True, _int(0))},
    "cancel_all": {"account": (True, _key), "zone": (True, _str), "slot": (False, _int(0)), "nonce": (True, _int(0)),
                   "ts_ms": (True, _int(0))},
    "battery_plan": {"account": (True, _key), "zone": (True, _str), "nonce": (True, _int(0)),
                     "ts_ms": (True, _int(0)), "slots": (True, lambda v: _plan_slots(v))},
    "slot_root": {"zone": (True, _str), "slot": (True, _int(0)), "root": (True, _key), "statements": (True, _int(0)),
                  "operator": (True, _key), "ts_ms": (True, _int(0))},
}
_status = lambda v: v in ("open", "filled", "cancelled", "expired")
_state = lambda v: v in ("open", "closed")
_level = lambda v: (isinstance(v, dict) and set(v) == {"price_per_kwh", "qty_wh", "orders"}
                    and _int(1)(v["price_per_kwh"]) and _int(0)(v["qty_wh"]) and _int(0)(v["orders"]))
_levels = lambda v: isinstance(v, list) and all(_level(x) for x in v)

# Outbound messages (PROTOCOL.md, "Outbound messages are signed by the operator"): no field names the
# signer; the receiver verifies against the operator key it pinned (the vector's public_key).
OUTBOUND = {
    "trade": {"trade_id": (True, _int(0)), "zone": (True, _str), "slot": (True, _int(0)),
              "price_per_kwh": (True, _int(1)), "qty_wh": (True, _int(1)), "buyer": (True, _key),
              "seller": (True, _key), "buy_nonce": (True, _int(0)), "sell_nonce": (True, _int(0)),
              "aggressor": (True, _side), "ts_ms": (True, _int(0))},
    "book": {"zone": (True, _str), "slot": (True, _int(0)), "seq": (True, _int(0)), "state": (True, _state),
             "bids": (True, _levels), "asks": (True, _levels), "ts_ms": (True, _int(0)),
             "call_phase": (False, _bool)},
    "order_update": {"account": (True, _key), "zone": (True, _str), "slot": (True, _int(0)),
                     "order_nonce": (True, _int(0)), "status": (True, _status), "price_per_kwh": (True, _int(1)),
                     "open_qty_wh": (True, _int(0)), "filled_qty_wh": (True, _int(0)), "ts_ms": (True, _int(0))},
    "reject": {"of": (True, _str), "seq": (False, _int(0)), "reason": (True, _str), "message": (True, _str),
               "ts_ms": (True, _int(0))},
    "reading_ack": {"device": (True, _key), "seq": (True, _int(0)), "ts_ms": (True, _int(0))},
    "auction": {"zone": (True, _str), "slot": (True, _int(0)), "price_per_kwh": (False, _int(1)),
                "qty_wh": (True, _int(0)), "trades": (True, _int(0)), "ts_ms": (True, _int(0))},
}
FIELDS.update(OUTBOUND)
# PROTOCOL.md section 4.1 and 9: a reading on a version 2 channel (gridex/v2/...) has the battery
# fields too, and at least one of them; version 1 knows none of them.
_soc = lambda v: _int(0)(v) and v <= 1000
BATTERY = {"battery_charge_wh": (False, _int(0)), "battery_discharge_wh": (False, _int(0)),
           "battery_soc_permille": (False, _soc), "battery_capacity_wh": (False, _int(1))}
FIELDS_V2 = {"reading": dict(FIELDS["reading"], **BATTERY)}
SIGNER = {"reading": "device", "battery_plan": "account", "order": "account", "cancel": "account", "replace": "account", "cancel_all": "account", "slot_root": "operator"}


class Rejected(Exception):
    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def check_values(value):
    """The restricted value set: objects, arrays, strings, booleans, integers within +-(2^53-1)."""
    if value is None:
        raise Rejected("null_not_allowed")
    if isinstance(value, float):
        raise Rejected("float_not_allowed")
    if isinstance(value, bool) or isinstance(value, str):
        return
    if isinstance(value, int):
        if abs(value) > MAX_SAFE:
            raise Rejected("integer_out_of_range")
        return
    if isinstance(value, list):
        for item in value:
            check_values(item)
        return
    if isinstance(value, dict):
        for item in value.values():
            check_values(item)
        return
    raise Rejected("wrong_type")


# The two-character escapes of RFC 8785 (JSON's short forms); other control characters are \u00XX.
SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(text):
    out = ['"']
    for ch in text:
        if ch in SHORT_ESCAPES:
            out.append(SHORT_ESCAPES[ch])
        elif ord(ch) < 0x20:
            out.append("\\u%04x" % ord(ch))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def canonical(value):
    """RFC 8785 for the restricted set: members sorted by UTF-16 code units, no whitespace."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, list):
        return "[" + ",".join(canonical(v) for v in value) + "]"
    keys = sorted(value.keys(), key=lambda k: k.encode("utf-16-be"))
    return "{" + ",".join(escape(k) + ":" + canonical(value[k]) for k in keys) + "}"


def verify(kind, message, pinned, version=1):
    """Returns the signing bytes of a valid message, raises Rejected(reason) otherwise. `pinned`: the
    operator key the receiver configured, used for outbound kinds (and required of a slot root);
    `version`: that of the channel (topic) the message came by."""
    wire = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    limit = OUTBOUND_SIZE_MAX if kind in OUTBOUND else PLAN_SIZE_MAX if kind == "battery_plan" else SIZE_MAX
    if len(wire) > limit:
        raise Rejected("too_large")
    check_values(message)
    if message.get("type") != kind:
        raise Rejected("wrong_message_type")
    if "sig" not in message:
        raise Rejected("missing_signature")
    sig = message["sig"]
    if not isinstance(sig, str) or not HEX128.match(sig):
        raise Rejected("malformed_signature")
    body = {k: v for k, v in message.items() if k != "sig"}
    if version == 1:
        fields = FIELDS[kind]
    elif kind in FIELDS_V2:
        fields = FIELDS_V2[kind]
    else:
        raise Rejected("wrong_message_type")
    for name in body:
        if name != "type" and name not in fields:
            raise Rejected("unknown_field")
    if version == 2 and not any(name in body for name in BATTERY):
        raise Rejected("missing_field")
    for name, (required, ok) in fields.items():
        if name not in body:
            if required:
                raise Rejected("missing_field")
            continue
        if not ok(body[name]):
            raise Rejected("invalid_value")
    signing_bytes = ("gridex/v%d/%s\n" % (version, kind)).encode("utf-8") + canonical(body).encode("utf-8")
    signer = pinned if kind in OUTBOUND else bytes.fromhex(body[SIGNER[kind]])
    check_signature(signer, signing_bytes, bytes.fromhex(sig))
    return signing_bytes


def check_signature(public_key, signing_bytes, sig):
    """PROTOCOL.md section 2, the acceptance rule.

    libsodium's crypto_sign_verify_detached checks that s is canonical, that A and R are canonical
    and not of small order, and the cofactorless equation; it does NOT check that A is in the
    prime-order subgroup (vector mixed-order-key passes it). The rule is stricter there, so A and R
    are checked first with crypto_core_ed25519_is_valid_point, which requires a canonical encoding
    of a point on the curve, not of small order, in the prime-order subgroup (torsion-free). For R
    this adds nothing to the cofactorless equation once A is torsion-free, but it states the rule.
    """
    if not nacl.bindings.crypto_core_ed25519_is_valid_point(public_key):
        raise Rejected("invalid_public_key")  # not canonical, not on the curve, small or mixed order
    if not nacl.bindings.crypto_core_ed25519_is_valid_point(sig[:32]):
        raise Rejected("bad_signature")  # R: not canonical, not on the curve, small or mixed order
    try:
        nacl.signing.VerifyKey(public_key).verify(signing_bytes, sig)
    except nacl.exceptions.BadSignatureError:
        raise Rejected("bad_signature")  # s not below L, or the cofactorless equation fails


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "protocol/test-vectors.json"
    with open(path, encoding="utf-8") as handle:
        vectors = json.load(handle)
    failures = 0
    for vector in vectors:
        name, kind = vector["name"], vector["kind"]
        try:
            signing_bytes = verify(kind, vector["message"], bytes.fromhex(vector["public_key"]),
                                   vector.get("version", 1))
            outcome = "valid"
        except Rejected as rejected:
            outcome = rejected.reason
        if vector["valid"]:
            good = outcome == "valid" and signing_bytes.hex() == vector["signing_bytes_hex"]
        else:
            good = outcome == vector["reason"]
        expected = "valid" if vector["valid"] else vector["reason"]
        print("%-4s %-32s expected %-22s got %s" % ("ok" if good else "FAIL", name, expected, outcome))
        failures += 0 if good else 1
    print("%d vectors, %d failures" % (len(vectors), failures))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
