#!/usr/bin/env python3
"""Fetch the pinned ONNX Runtime shared library from its PyPI wheel and verify it.

resnet-serve loads ONNX Runtime at run time (ort's `load-dynamic`); the library must match the
version ort was built for. This script downloads the pinned wheel with pip, extracts
`libonnxruntime.so.<version>`, checks its sha256 against the pin below and writes it to DEST.
It is run by build.rs, and by hand or by Dockerfiles:

    python3 scripts/fetch_onnxruntime.py DEST_DIR [--gpu]
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

VERSION = "1.31.1"
# (package, platform tag) -> sha256 of onnxruntime/capi/libonnxruntime.so.VERSION in that wheel.
PINNED = {
    ("onnxruntime", "manylinux_2_28_x86_64"):
        "fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3",
    ("onnxruntime-gpu", "manylinux_2_28_x86_64"):
        "5104254339ecadae808da771bd0b63b240f0dbd466514234905e54372435c303",
}
# The wheels bundle the same library for every CPython; pin one so the hash is stable.
PYTHON = ("3.11", "cp311")


def library_name() -> str:
    return f"libonnxruntime.so.{VERSION}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(dest: str, gpu: bool, platform: str) -> str:
    package = "onnxruntime-gpu" if gpu else "onnxruntime"
    target = os.path.join(dest, library_name())
    expected = PINNED.get((package, platform))
    if os.path.exists(target) and expected:
        with open(target, "rb") as existing:
            if sha256(existing.read()) == expected:
                return target
    with tempfile.TemporaryDirectory() as download:
        command = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
            "--only-binary=:all:", "--platform", platform,
            "--python-version", PYTHON[0], "--implementation", "cp", "--abi", PYTHON[1],
            "--dest", download, f"{package}=={VERSION}",
        ]
        subprocess.run(command, check=True, stdout=sys.stderr)
        wheels = [name for name in os.listdir(download) if name.endswith(".whl")]
        if len(wheels) != 1:
            sys.exit(f"expected one wheel for {package}=={VERSION}, pip gave {wheels}")
        with zipfile.ZipFile(os.path.join(download, wheels[0])) as wheel:
            member = f"onnxruntime/capi/{library_name()}"
            data = wheel.read(member)
            actual = sha256(data)
            if expected is None:
                print(f"warning: no pinned sha256 for {package} on {platform}; "
                      f"got {actual} for {member}", file=sys.stderr)
            elif actual != expected:
                sys.exit(f"sha256 mismatch for {member} in {wheels[0]}: "
                         f"expected {expected}, got {actual}")
            os.makedirs(dest, exist_ok=True)
            # The CUDA provider needs its companion libraries beside the core library.
            for name in wheel.namelist():
                base = os.path.basename(name)
                if name.startswith("onnxruntime/capi/") and base.startswith("libonnxruntime"):
                    with wheel.open(name) as source, open(os.path.join(dest, base), "wb") as out:
                        shutil.copyfileobj(source, out)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", help="directory to write the library into")
    parser.add_argument("--gpu", action="store_true", help="fetch onnxruntime-gpu (CUDA)")
    parser.add_argument("--platform", default="manylinux_2_28_" + os.uname().machine)
    args = parser.parse_args()
    print(fetch(args.dest, args.gpu, args.platform))


if __name__ == "__main__":
    main()
