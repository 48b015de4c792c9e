"""``python -m tests.emulators.guard``: the emulator on a port of your choice."""

from .server import main

main()
