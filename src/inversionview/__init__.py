"""InversionView: read what a neural activation encodes from its epsilon-preimage."""

import os

# Nothing in this toolkit may reach a model hub at run time: weights, configs and
# tokenizers come from local directories (or the user's local cache). Respect an explicit
# user setting, otherwise force the hub libraries offline before they are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"

__all__ = ["InversionView", "__version__"]


def __getattr__(name: str):
    """``from inversionview import InversionView``, imported on first use (the CLI starts
    without torch's import cost where it does not need it)."""
    if name == "InversionView":
        from inversionview.api import InversionView

        return InversionView
    raise AttributeError(f"module 'inversionview' has no attribute {name!r}")
