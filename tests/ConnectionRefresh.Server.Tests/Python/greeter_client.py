#!/usr/bin/python3
"""A Python grpcio client of greet.Greeter (protos/greeter.proto) for the server-side connection age tests.

Usage: greeter_client.py HOST:PORT MAX_SECONDS

Calls SayHello (and, every tenth call, StreamHellos) in a loop until stdin is closed or MAX_SECONDS pass, then prints
one JSON line: {"ok": n, "failed": n, "errors": {code: n}, "first_error": str, "instances": [...]}.

The messages are encoded by hand (they are tiny), so no generated stubs or grpc_tools are needed: only Debian's
python3-grpcio.
"""
import json
import sys
import threading
import time

import grpc


def _varint(value):
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _string_field(number, text):
    data = text.encode("utf-8")
    return _varint((number << 3) | 2) + _varint(len(data)) + data


def _int_field(number, value):
    return _varint(number << 3) + _varint(value) if value else b""


def hello_request(name, delay_ms=0):
    return _string_field(1, name) + _int_field(2, delay_ms)


def stream_request(name, count, delay_ms=0):
    return _string_field(1, name) + _int_field(2, count) + _int_field(3, delay_ms)


def decode(data):
    """Decodes a HelloReply/HelloSummary into {field number: value}."""
    fields, i = {}, 0
    while i < len(data):
        key, i = _read_varint(data, i)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            fields[number], i = _read_varint(data, i)
        elif wire_type == 2:
            length, i = _read_varint(data, i)
            fields[number] = data[i:i + length].decode("utf-8")
            i += length
        else:
            raise ValueError("unexpected wire type %d" % wire_type)
    return fields


def _read_varint(data, i):
    shift = result = 0
    while True:
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, i
        shift += 7


def _identity(value):
    return value


def main():
    target, max_seconds = sys.argv[1], float(sys.argv[2])
    stop = threading.Event()

    def wait_for_stdin_close():
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_stdin_close, daemon=True).start()

    channel = grpc.insecure_channel(target)
    say_hello = channel.unary_unary("/greet.Greeter/SayHello", request_serializer=_identity, response_deserializer=_identity)
    stream_hellos = channel.unary_stream("/greet.Greeter/StreamHellos", request_serializer=_identity, response_deserializer=_identity)

    ok = failed = 0
    errors, first_error, instances = {}, None, set()
    deadline = time.monotonic() + max_seconds
    i = 0
    print("started", flush=True)
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            if i % 10 == 9:
                replies = [decode(r) for r in stream_hellos(stream_request("py%d" % i, 3), timeout=10)]
                if len(replies) != 3:
                    raise RuntimeError("expected 3 replies, got %d" % len(replies))
                instances.update(r.get(2, "") for r in replies)
            else:
                reply = decode(say_hello(hello_request("py%d" % i), timeout=10))
                if reply.get(1) != "Hello py%d" % i:
                    raise RuntimeError("unexpected reply %r" % reply)
                instances.add(reply.get(2, ""))
            ok += 1
        except (grpc.RpcError, RuntimeError, ValueError) as error:
            failed += 1
            code = str(error.code()) if isinstance(error, grpc.RpcError) else type(error).__name__
            errors[code] = errors.get(code, 0) + 1
            if first_error is None:
                first_error = str(error)
        i += 1

    channel.close()
    print(json.dumps({"ok": ok, "failed": failed, "errors": errors, "first_error": first_error, "instances": sorted(instances)}), flush=True)


if __name__ == "__main__":
    main()
