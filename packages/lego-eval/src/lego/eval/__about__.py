"""Version of the lego-eval distribution (read by hatch and by the release session)."""

__version__ = "0.1.0"
