"""The ``sluice`` command of the Python package: the same CLI as the Rust binary, run in this
interpreter (so Python tools see the packages installed next to it)."""

import os
import signal
import sys


def main() -> None:
    from sluice import _native

    # As the binary does: stop quietly when stdout's reader goes away (`| head`), and let Ctrl-C reach
    # the engine's own handler (a batch run then stops as canceled).
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # Tools' prints must not mix with the command's JSON on stdout (the engine writes to the file
    # descriptor itself).
    sys.stdout.flush()
    sys.stdout = sys.stderr
    code = _native.cli_main(["sluice", *sys.argv[1:]])
    sys.stderr.flush()
    # Exit at once, as the binary does: a tool thread still running after its line timed out must not
    # keep the process alive.
    os._exit(code)
