"""`xbook serve`: a trained run behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

import argparse

from xbook.cli.common import add_command, add_mesh_flags, flag_mesh_config


def add_parser(subparsers) -> None:
  """The `serve` subcommand."""
  p = add_command(subparsers, "serve", "Serve a trained run over an OpenAI-compatible HTTP API on the KV-cache decoder "
                  "(POST /v1/completions with a raw prompt, POST /v1/chat/completions, GET /v1/models, GET /health; "
                  "streaming with \"stream\": true); requests from several clients are decoded together in one "
                  "batch; chat messages become the trajectory's prompt, encoded in the run's vocabulary (xbook's, "
                  "or a pretrained tokenizer.json, tekken.json or tokenizer.model). Stops cleanly on SIGTERM.",
                  "xbook serve --run_dir runs/demo --port 8000\n"
                  "curl http://127.0.0.1:8000/v1/chat/completions -d '{\"messages\": [{\"role\": \"user\", "
                  "\"content\": \"Write a ghost story.\"}], \"max_tokens\": 64}'", _serve)
  p.add_argument("--run_dir", required=True)
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--port", type=int, default=8000, help="0: any free port (printed when ready)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--model_name", default=None, help="served model name (default: RUN_DIR_NAME@STEP)")
  p.add_argument("--max_prompt_tokens", type=int, default=1024, help="longer prompts keep their first tokens")
  p.add_argument("--max_tokens", type=int, default=256, help="the most tokens of one answer")
  p.add_argument("--context_len", type=int, default=None,
                 help="the most tokens of a prompt plus its answer (default: the run's trained seq_len)")
  p.add_argument("--max_batch", type=int, default=8, help="the most requests decoded together")
  p.add_argument("--batch_window_ms", type=float, default=0.0,
                 help="how long the decode worker waits for more requests before starting a batch")
  p.add_argument("--sync_every", type=int, default=16,
                 help="decode steps between streamed chunks (and stop-string checks)")
  p.add_argument("--batching", default="continuous", choices=("continuous", "static"),
                 help="continuous (default): a request joins the running ones at the next decode step and "
                      "leaves when done; static: a batch runs to its end before the next starts")
  p.add_argument("--max_waiting", type=int, default=256,
                 help="continuous: the most requests waiting for a slot; beyond it, 503 with Retry-After")
  p.add_argument("--prefill_chunk", type=int, default=512,
                 help="continuous: the most prompt tokens of a request prefilled per step (running requests "
                      "decode between a long prompt's chunks)")
  p.add_argument("--no_prefix_reuse", action="store_true",
                 help="continuous: prefill every prompt whole (default: a prompt's longest prefix already in "
                      "the cache is reused)")
  add_mesh_flags(p)


def _serve(args: argparse.Namespace) -> int:
  from xbook.infer.listen import bind_or_report
  sock = bind_or_report(args.host, args.port)  # a busy port is reported at once, before jax loads
  if sock is None:
    return 2
  from xbook.infer.serve import BatchingConfig, serve
  batching = BatchingConfig(batching=args.batching, max_batch=args.max_batch, batch_window_ms=args.batch_window_ms,
                            sync_every=args.sync_every, max_waiting=args.max_waiting,
                            prefill_chunk=args.prefill_chunk, prefix_reuse=not args.no_prefix_reuse)
  return serve(args.run_dir, host=args.host, port=args.port, step=args.step, name=args.model_name,
               max_prompt_tokens=args.max_prompt_tokens, max_tokens=args.max_tokens,
               context_len=args.context_len, batching=batching, mesh_config=flag_mesh_config(args),
               shard_cache_length=args.shard_cache_length, sock=sock)
