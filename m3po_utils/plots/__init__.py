"""Figures, one module per notebook: world (00), candidates (01), mas (02), confidence (03), dpo (05), evaluation (06), experiments (10).

Every helper returns a matplotlib figure and writes nothing.
"""
