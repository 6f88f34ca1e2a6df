"""xbook: prompt-to-book training of long-context decoders on human-authored novels.

Layers (each imports only the ones before it): books -> scaffold -> data -> model -> train -> infer -> evals.
docs/architecture.md (in the repository) maps the data flow, the layers and the module that owns each
contract. Importing xbook has no side effect: the entry points set up the environment (xbook.host_env).
"""

__version__ = "0.1.0"
