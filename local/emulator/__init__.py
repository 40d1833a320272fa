"""Microsoft Graph + identity emulator for local runs and tests (see README.md).

    from local.emulator import start_emulator
    with start_emulator() as emu:
        emu.authority_host, emu.graph_base, emu.ca_path, emu.control_url, emu.control
"""

from .control import ControlError, EmulatorControl
from .server import Emulator, start_emulator

__all__ = ["ControlError", "Emulator", "EmulatorControl", "start_emulator"]
