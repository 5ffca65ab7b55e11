"""m3po_utils: the package behind the M3PO notebook series (one module per stage)."""

__version__ = "0.1.0"
