"""Trajectories from scaffolds: segment layout, vocabularies (xbook SentencePiece, tokenizer.json, Tekken),
seqio tasks, feature converter."""
