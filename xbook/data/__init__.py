"""Trajectories from scaffolds: segment layout, vocabularies (xbook SentencePiece, tokenizer.json, Tekken),
seqio tasks, feature converter; the stage protocol of the paper's released models (stage_protocol) and
its trajectory layout (paper_stages)."""
