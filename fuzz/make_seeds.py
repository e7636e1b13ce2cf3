"""Writes the hand-made seed inputs of the fuzz targets into fuzz/seeds/ (image targets take
their seeds from tests/fixtures instead). Run from the repository root."""
import base64
import json
import pathlib
import struct

root = pathlib.Path("fuzz/seeds")
png = pathlib.Path("tests/fixtures/images/fashion-8-label5.png").read_bytes()
b64 = base64.b64encode(png).decode()
tensor = struct.pack("<4f", 0.5, 1.0, 1.5, -2.0)
element = struct.pack("<I", len(png)) + png  # one Triton BYTES element


def write(target, name, data):
    path = root / target / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


# /classify bodies (multipart seeds use the boundary the target sets: fuzzboundary).
write("classify_body", "json-image", json.dumps({"image": b64}))
write("classify_body", "json-images", json.dumps({"images": [
    base64.urlsafe_b64encode(png).decode(), "data:image/png;base64," + b64]}))
write("classify_body", "json-wrong-shape", '{"images": [1, {"a": null}], "image": "x"}')
boundary = b"fuzzboundary"
part = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="a.png"'
        b"\r\nContent-Type: image/png\r\n\r\n" + png + b"\r\n")
write("classify_body", "multipart-two-files", part * 2 + b"--" + boundary + b"--\r\n")
write("classify_body", "multipart-field-only", b"--" + boundary
      + b'\r\nContent-Disposition: form-data; name="x"\r\n\r\nvalue\r\n--' + boundary + b"--\r\n")

# V2 REST infer bodies: JSON, and JSON followed by binary data.
write("v2_infer_body", "json-fp32", json.dumps({
    "id": "1", "parameters": {"priority": 1, "timeout": 1000},
    "inputs": [{"name": "input", "shape": [1, 1, 2, 2], "datatype": "FP32",
                "data": [[0.5, 1.0], [1.5, -2.0]]}],
    "outputs": [{"name": "logits", "parameters": {"classification": 3, "binary_data": False}}]}))
write("v2_infer_body", "json-bytes", json.dumps({
    "inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": [b64]}]}))
for name, datatype, shape, data in [("binary-fp32", "FP32", [1, 1, 2, 2], tensor),
                                    ("binary-bytes", "BYTES", [1], element)]:
    head = json.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": datatype,
                                   "parameters": {"binary_data_size": len(data)}}],
                       "parameters": {"binary_data_output": True}}).encode()
    write("v2_infer_body", name, head + data)


# V2 gRPC ModelInferRequest messages, encoded by hand (field numbers of grpc_service.proto).
def varint(n):
    out = b""
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([low])
        out += bytes([low | 0x80])


def field(number, payload):
    """A length-delimited field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def text(number, value):
    return field(number, value.encode())


shape = field(3, b"".join(varint(d) for d in [1, 1, 2, 2]))
priority = field(4, text(1, "priority") + field(2, varint(2 << 3) + varint(7)))
typed = text(1, "input") + text(2, "FP32") + shape + field(5, field(6, tensor))
write("v2_grpc_request", "typed-fp32", text(1, "model") + text(3, "id") + priority
      + field(5, typed) + field(6, text(1, "logits")))
raw_bytes = text(1, "input") + text(2, "BYTES") + field(3, varint(1))
write("v2_grpc_request", "raw-bytes", text(1, "model") + field(5, raw_bytes) + field(7, element))
raw_fp32 = text(1, "input") + text(2, "FP32") + shape
write("v2_grpc_request", "raw-fp32", text(1, "model") + field(5, raw_fp32) + field(7, tensor))
