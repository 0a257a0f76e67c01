"""sam-bridge: text-prompted audio separation (SAM Audio on fal) for DAWs and hot folders."""

__version__ = "0.2.2"
