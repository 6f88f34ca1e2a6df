"""Trajectories from scaffolds: segment layout, SentencePiece vocabulary, seqio tasks, feature converter."""
