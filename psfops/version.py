"""The one place the version of psfops and sdpsfnet is written (setup.py reads it)."""
__version__ = "0.3.0"
