"""Lets ``import promptflow`` find Sluice's stand-in when promptflow itself is not installed.

``sluice_flow.pth`` imports this module when Python starts. It appends one finder to the end of
``sys.meta_path``, so it is asked about ``promptflow`` only after every real finder has failed to find
it: an installed promptflow always wins, and nothing is imported until a program asks for
``promptflow``. The stand-in (``sluice._promptflow``) provides the tool API (``promptflow.core``,
connections, ...) and ``promptflow.client`` (``PFClient``, ``load_flow``) backed by Sluice.

The wheel deliberately ships no top-level ``promptflow`` package, which would overwrite a real one.
"""

import sys


class PromptflowStandIn:
    """A meta-path finder for ``promptflow``; set ``SLUICE_NO_PROMPTFLOW_STAND_IN=1`` to disable it."""

    _sluice_stand_in = True

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname != "promptflow":
            return None
        import os

        if os.environ.get("SLUICE_NO_PROMPTFLOW_STAND_IN", "").strip().lower() in ("1", "true", "yes"):
            return None
        from importlib.machinery import ModuleSpec

        return ModuleSpec("promptflow", cls, origin="sluice promptflow stand-in", is_package=True)

    @staticmethod
    def create_module(spec):
        import sluice
        import sluice._promptflow

        sluice._promptflow.install(sluice)
        return sys.modules["promptflow"]

    @staticmethod
    def exec_module(module):
        pass


def _install():
    if not any(getattr(f, "_sluice_stand_in", False) for f in sys.meta_path):
        sys.meta_path.append(PromptflowStandIn)


_install()
