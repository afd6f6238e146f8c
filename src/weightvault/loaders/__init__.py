"""Loaders from sealed files into frameworks: :mod:`.torch`, :mod:`.numpy`, :mod:`.transformers`.

Each framework is imported lazily, only by its own module, so weightvault works
without torch or transformers installed.
"""
