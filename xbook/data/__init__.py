"""Trajectories from scaffolds: segments in a plan order, vocabularies (xbook SentencePiece, tokenizer.json, Tekken),
the views that cut them into examples, the DataSpec and TrajectoryFormat that say what a run reads (spec), the seqio
adapter (tasks) and offline cache, feature converter; the plan order of the paper's stage protocol (paper_stages; the
protocol itself is xbook.scaffold.stage_protocol, which scaffold records are built and checked with)."""
