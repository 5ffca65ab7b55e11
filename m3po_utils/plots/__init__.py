"""Figures, one module per notebook: world (00), candidates (01), mas (02), confidence (03), dpo (05), evaluation (06), experiments (10).

Every helper returns a matplotlib figure and writes nothing. Importing the package inside a notebook kernel with
``M3PO_FIGURE_AUDIT`` set audits every figure the notebook shows (:mod:`m3po_utils.plots.audit`).
"""

from m3po_utils.plots import audit

audit.watch()
