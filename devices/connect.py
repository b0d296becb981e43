"""Open the transport a device profile names (the transports build on devices/transport.py)."""

from __future__ import annotations

from edgeport.devices.adb import AdbDevice
from edgeport.devices.local import LocalDevice
from edgeport.devices.profiles import BaseProfile
from edgeport.devices.ssh import SshDevice
from edgeport.devices.transport import Device


def open_device(profile: BaseProfile) -> Device:
    """The transport a profile names."""
    transports = {"ssh": SshDevice, "adb": AdbDevice}
    return transports.get(profile.transport, LocalDevice)(profile)
