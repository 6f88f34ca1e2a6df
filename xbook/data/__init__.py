"""Trajectories from scaffolds: segment layout, vocabularies (xbook SentencePiece, tokenizer.json, Tekken),
seqio tasks, feature converter; the trajectory layout of the paper's stage protocol (paper_stages; the
protocol itself is xbook.scaffold.stage_protocol, which scaffold records are built and checked with)."""
