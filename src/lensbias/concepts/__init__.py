"""Concepts: labelled datasets (prose from UD treebanks, Python and C code) and alignment."""
