"""A FAKE `adb` for tests/test_devices_adb.py (no Android device exists on these machines).

It understands the calls edgeport makes: `-s SERIAL`, `get-state`, `push SRC DST`, `shell CMD`,
`exec-out CMD`. Like adbd, it hands `shell`'s command string to a real /bin/sh, so what
edgeport quotes is really parsed by a shell. FAKE_ADB_STATE overrides the device state.
"""
import os
import shutil
import subprocess
import sys

args = sys.argv[1:]
if args[:1] == ["-s"]:
    args = args[2:]
verb, rest = args[0], args[1:]
if verb == "get-state":
    state = os.environ.get("FAKE_ADB_STATE", "device")
    print(state if state == "device" else "", file=sys.stdout)
    if state != "device":
        print(f"error: device {state}", file=sys.stderr)
    sys.exit(0 if state == "device" else 1)
if verb == "push":
    shutil.copyfile(rest[0], rest[1])
    print(f"{rest[0]}: 1 file pushed.")
    sys.exit(0)
if verb in ("shell", "exec-out"):
    sys.exit(subprocess.run(["/bin/sh", "-c", " ".join(rest)]).returncode)
print(f"fake adb: unsupported {verb}", file=sys.stderr)
sys.exit(1)
