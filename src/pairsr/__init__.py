"""pairsr: super-resolve whole-field EM survey scans from a physical LR/HR image pair."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pairsr")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
