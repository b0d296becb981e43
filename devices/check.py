"""`edgeport devices check NAME`: connect, ask the runner's probe what the device has, and say
exactly what is missing with the pip line that installs it."""

from __future__ import annotations

from edgeport.devices.profiles import get_profile
from edgeport.devices.remote import missing_runtimes, pip_line, probe
from edgeport.devices.transport import open_device


def check_device(name: str, devices_dir=None) -> dict:
    profile = get_profile(name, devices_dir)
    with open_device(profile) as device:
        if profile.transport == "adb" and not profile.python:
            facts = {**device.facts(), "runtimes": {}}
            tool = device.run(["ls", profile.benchmark_model], timeout=30) if profile.benchmark_model else None
            found = tool is not None and tool.returncode == 0
            facts["runtimes"] = {"tflite": {"module": "benchmark_model", "version": profile.benchmark_model}} if found else {}
            missing = [] if found else ["benchmark_model"]
            problem = (f"{name}: TFLite's benchmark_model is not at {profile.benchmark_model}: build it for "
                       "android_arm64 and `adb push` it there" if not found else None)
        else:
            facts = probe(device)
            missing = missing_runtimes(device, facts, profile.runtimes)
            problem = (f"{name} lacks {', '.join(missing)}: run `{pip_line(device, missing)}` on the device"
                       if missing else None)
    warnings = []
    if profile.arch and facts.get("arch") and facts["arch"] != profile.arch:
        warnings.append(f"{name}: the profile says arch {profile.arch}, the device is {facts['arch']}")
    runtimes = facts.pop("runtimes", {})
    problems = runtimes.pop("problems", {})
    warnings += [f"{module} is installed but does not import: {why}" for module, why in problems.items()]
    return {"device": name, "transport": profile.transport, "address": profile.address, "facts": facts,
            "runtimes": {r: runtimes.get(r) for r in ("onnxruntime", "openvino", "tflite")}, "missing": missing,
            "problem": problem, "warnings": warnings}
