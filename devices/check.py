"""`edgeport devices check NAME`: connect, ask the runner's probe what the device has, and say
exactly what is missing with the pip line that installs it."""

from __future__ import annotations

from edgeport.devices.profiles import get_profile
from edgeport.devices.remote import missing_runtimes, pip_line, probe
from edgeport.devices.connect import open_device
from edgeport.types import DeviceRuntime


def check_device(name: str, runtimes: list[DeviceRuntime], devices_dir=None) -> dict:
    """What the device has of `runtimes` (every target's), and what its profile expects but lacks."""
    profile = get_profile(name, devices_dir)
    wanted = {r.name: [tuple(m) for m in r.modules] for r in runtimes}
    with open_device(profile) as device:
        if profile.transport == "adb" and not profile.python:
            facts = {**device.facts(), "runtimes": {}}
            tool = device.run(["ls", profile.benchmark_model], timeout=30) if profile.benchmark_model else None
            found = tool is not None and tool.returncode == 0
            native = [r.name for r in runtimes if r.phone_benchmark == "benchmark_model"]
            facts["runtimes"] = {r: {"module": "benchmark_model", "version": profile.benchmark_model}
                                 for r in native} if found else {}
            missing = [] if found else ["benchmark_model"]
            problem = (f"{name}: benchmark_model is not at {profile.benchmark_model}: build it for "
                       "android_arm64 and `adb push` it there" if not found else None)
        else:
            facts = probe(device, wanted)
            missing = missing_runtimes(facts, wanted, profile.runtimes)
            problem = (f"{name} lacks {', '.join(missing)}: run `{pip_line(device, missing)}` on the device"
                       if missing else None)
    warnings = []
    if profile.arch and facts.get("arch") and facts["arch"] != profile.arch:
        warnings.append(f"{name}: the profile says arch {profile.arch}, the device is {facts['arch']}")
    found_runtimes = facts.pop("runtimes", {})
    problems = found_runtimes.pop("problems", {})
    warnings += [f"{module} is installed but does not import: {why}" for module, why in problems.items()]
    return {"device": name, "transport": profile.transport, "address": profile.address, "facts": facts,
            "runtimes": {r: found_runtimes.get(r) for r in wanted}, "missing": missing,
            "problem": problem, "warnings": warnings}
