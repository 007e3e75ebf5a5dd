"""Version of the lego-serve distribution (read by hatch and by the release session)."""

__version__ = "0.1.0"
