"""Logical axis names of the decoder's activations.

The layers constrain their activations to these names (`nn.with_logical_constraint`) and ring attention
builds its `shard_map` specs from them; the logical axis rules in force (`nn.logical_axis_rules`, set by
the caller from xbook.train.partitioning) map each name to mesh axes. `None` marks an axis that is never
sharded.
"""

from __future__ import annotations

from typing import Any, Sequence

# Logical axis rules: (logical name, mesh axis or axes or None) pairs, in order of precedence (flax).
LogicalRules = Sequence[tuple[str, Any]]

# [batch, length]: token ids, segment ids, positions.
BATCH_LENGTH: tuple[str, ...] = ("activation_batch", "activation_length")
# [batch, length, embed]: the residual stream.
BATCH_LENGTH_EMBED: tuple[str, ...] = BATCH_LENGTH + ("activation_embed",)
# [batch, length, mlp]: the MLP's hidden layer.
BATCH_LENGTH_MLP: tuple[str, ...] = BATCH_LENGTH + ("activation_mlp",)
# [batch, length, vocab]: logits.
BATCH_LENGTH_VOCAB: tuple[str, ...] = BATCH_LENGTH + ("activation_vocab",)
# Queries [batch, length, n_kv_heads, group, head_dim]; head_dim is contracted by attention, so whole.
QUERY: tuple[str | None, ...] = BATCH_LENGTH + ("activation_kv_heads", "activation_heads", None)
# Keys and values [batch, length, n_kv_heads, head_dim].
KEY_VALUE: tuple[str | None, ...] = BATCH_LENGTH + ("activation_kv_heads", None)
