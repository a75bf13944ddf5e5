"""The decoder: conditional generator of inputs given an activation, and its training."""

from inversionview.decoder.model import Decoder, DecoderConfig

__all__ = ["Decoder", "DecoderConfig"]
