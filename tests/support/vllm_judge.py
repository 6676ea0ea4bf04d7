"""vLLM's own argument parser as a judge of the command lines the operator renders: run with the vLLM tools'
Python (.tools/vllm/venv), it reads one JSON list of `vllm serve` arguments (what follows `vllm serve`) per
line on stdin and answers one JSON object per line on stdout:

    {"ok": true, "values": {"tensor_parallel_size": 8, ...}}     parsed, and what vLLM understood
    {"ok": false, "error": "argument --dtype: invalid choice ..."}  what vLLM said

The parser is the one `vllm serve` builds (vllm/entrypoints/cli/main.py: a FlexibleArgumentParser with the
serve subcommand's parser from ServeSubcommand.subparser_init, i.e. launchers/cli_args.make_arg_parser), and
validate_parsed_serve_args runs on the result, as the serve command does before loading anything.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from typing import Any

# What the tests compare with what the operator decided (argparse destinations of vLLM's flags).
FIELDS = (
    "model_tag",
    "model",
    "served_model_name",
    "host",
    "port",
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "quantization",
    "dtype",
    "max_model_len",
    "distributed_executor_backend",
    "kv_cache_memory_bytes",
    "max_num_seqs",
    "enable_prefix_caching",
)


def build_parser() -> Any:
    from vllm.entrypoints.cli.serve import ServeSubcommand  # noqa: PLC0415 - only in the tools' virtualenv
    from vllm.utils.argparse_utils import FlexibleArgumentParser  # noqa: PLC0415

    parser = FlexibleArgumentParser(description="vLLM CLI")
    subparsers = parser.add_subparsers(required=False, dest="subparser")
    ServeSubcommand().subparser_init(subparsers)
    return parser


def judge(parser: Any, arguments: list[str]) -> dict[str, Any]:
    from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args  # noqa: PLC0415

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            namespace = parser.parse_args(["serve", *arguments])
            validate_parsed_serve_args(namespace)
    except SystemExit:
        return {"ok": False, "error": (said.getvalue().strip().splitlines() or ["exit"])[-1]}
    except Exception as error:  # a validation the parser delegates: its message is the verdict
        return {"ok": False, "error": f"{type(error).__name__}: {error}"}
    values = {name: getattr(namespace, name, None) for name in FIELDS}
    return {"ok": True, "values": json.loads(json.dumps(values, default=str))}


def main() -> None:
    parser = build_parser()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(judge(parser, json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
