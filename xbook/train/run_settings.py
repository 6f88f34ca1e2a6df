"""The numbers of a training run checked before anything is built or written (train()'s first act): one
ValueError naming the gin binding and its valid range (xbook.cli_errors prints it as one `error:` line)."""

from __future__ import annotations

from typing import Any, Mapping

# train() argument -> (least valid value, whether None is allowed). Steps, batches and intervals are counts.
_TRAIN_LEAST = {"steps": (1, False), "batch_size": (1, False), "seq_len": (1, False),
                "checkpoint_every": (1, False), "keep_checkpoints": (1, False), "keep_every": (1, True),
                "log_every": (1, False), "eval_every": (0, False), "eval_batches": (1, True),
                "microbatches": (1, False), "z_loss": (0, False), "repeat_weight": (0, False),
                "init_from_step": (0, True)}
# OptimizerConfig field -> least valid value (the learning rate must be positive, checked apart).
_OPTIMIZER_LEAST = {"warmup_steps": 0, "decay_steps": 0, "final_lr_fraction": 0, "weight_decay": 0, "eps": 0}


def _refuse(binding: str, value: Any, expected: str) -> None:
  raise ValueError(f"{binding} = {value!r}: expected {expected} (--gin.{binding}=...)")


def check_train_settings(settings: Mapping[str, Any], optimizer: Any,
                         loss_weights: Mapping[str, float] | None) -> None:
  """ValueError for the first of train()'s numbers, the optimizer's or a loss weight out of range."""
  for name, (least, optional) in _TRAIN_LEAST.items():
    value = settings[name]
    if value is None and optional:
      continue
    if value is None or value < least:
      _refuse(f"train.{name}", value, f"a number >= {least}" + (" or None" if optional else ""))
  learning_rate = getattr(optimizer, "learning_rate", None)
  if learning_rate is not None and not learning_rate > 0:
    _refuse("OptimizerConfig.learning_rate", learning_rate, "a number > 0")
  for name, least in _OPTIMIZER_LEAST.items():
    value = getattr(optimizer, name, None)
    if value is not None and value < least:
      _refuse(f"OptimizerConfig.{name}", value, f"a number >= {least}")
  for kind, weight in (loss_weights or {}).items():
    if weight < 0:
      _refuse("train.loss_weights", dict(loss_weights), f"weights >= 0 ({kind!r} is {weight})")
