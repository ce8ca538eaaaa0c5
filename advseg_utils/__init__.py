"""advseg_utils: the helper package behind the advseg notebooks.

Public names are re-exported here so a notebook needs only ``import advseg_utils``.
"""
__version__ = "0.1.0"
