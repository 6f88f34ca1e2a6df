"""Trajectories from scaffolds: segments in a plan order, vocabularies (xbook SentencePiece, tokenizer.json, Tekken),
seqio tasks, feature converter; the plan order of the paper's stage protocol (paper_stages; the
protocol itself is xbook.scaffold.stage_protocol, which scaffold records are built and checked with)."""
