"""ntmobile: NTMobile (Network Traversal with Mobility) in Python."""

__version__ = "0.1.0"
