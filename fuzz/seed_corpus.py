#!/usr/bin/env python3
"""Seeds fuzz/corpus-raw/<target>/ from the conformance fixtures and the js-sdk captures.

Wire targets take one selector byte (the index of the event type in the harness's type list,
see crates/voip-sim/src/fuzzing.rs) followed by the JSON content; `handle` takes a JSON list of
inputs. Run from the repository root:  python3 fuzz/seed_corpus.py [CAPTURES_DIR]
then minimise into fuzz/corpus/ with `cargo +nightly fuzz cmin` (docs/fuzzing.md).
"""
import hashlib, json, os, sys

CALL = ["m.call.invite", "m.call.answer", "m.call.candidates", "m.call.select_answer", "m.call.reject",
        "m.call.hangup", "m.call.negotiate", "m.call.sdp_stream_metadata_changed",
        "org.matrix.call.sdp_stream_metadata_changed", "m.call.replaces", "m.call.asserted_identity",
        "org.matrix.call.asserted_identity"]
MEMBER = ["com.famedly.call.member", "org.matrix.msc3401.call.member", "org.matrix.msc4143.rtc.member"]
KEYS = ["com.famedly.call.member.encryption_keys", "com.famedly.call.member.encryption_keys_request",
        "io.element.call.encryption_keys"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "corpus-raw")


def put(target, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


def event(t, content):
    if not isinstance(content, dict):
        return
    body = json.dumps(content, separators=(",", ":")).encode()
    for target, types in (("wire_call", CALL), ("wire_member", MEMBER), ("wire_keys", KEYS)):
        if t in types:
            put(target, bytes([types.index(t)]) + body)


def walk(v):
    """Every (type, content) pair anywhere in a JSON document."""
    if isinstance(v, dict):
        t = v.get("type") or v.get("event_type")
        if isinstance(t, str) and "content" in v:
            event(t, v["content"])
        for x in v.values():
            walk(x)
    elif isinstance(v, list):
        for x in v:
            walk(x)


def main():
    fixtures = os.path.join(ROOT, "fixtures")
    for name in sorted(os.listdir(fixtures)):
        if not name.endswith(".json") or "schema" in name:
            continue
        with open(os.path.join(fixtures, name)) as f:
            fx = json.load(f)
        walk(fx)
        inputs = [s["input"] for s in fx.get("steps", []) if isinstance(s, dict) and "input" in s]
        if inputs:
            put("handle", json.dumps(inputs[:64], separators=(",", ":")).encode())
    captures = sys.argv[1] if len(sys.argv) > 1 else "/work/shared/captures/matrix-js-sdk"
    for dirpath, _, files in os.walk(captures):
        for name in files:
            if name.endswith(".json"):
                with open(os.path.join(dirpath, name)) as f:
                    try:
                        walk(json.load(f))
                    except ValueError:
                        pass
    for t in sorted(os.listdir(OUT)):
        print(t, len(os.listdir(os.path.join(OUT, t))))


main()
