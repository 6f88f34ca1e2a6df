"""xbook: prompt-to-book training of long-context decoders on human-authored novels.

Layers (each imports only the ones before it): books -> scaffold -> data -> model -> train -> infer.
See ../shared/DESIGN.md for the contracts between them.
"""

__version__ = "0.1.0"
