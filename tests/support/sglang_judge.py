"""SGLang's own argument parser as a judge of the command lines the operator renders: run with the engine
tools' Python (.tools/vllm/venv, where `make tools` installs SGLang's parser), it reads one JSON list of
`python3 -m sglang.launch_server` arguments per line on stdin and answers one JSON object per line:

    {"ok": true, "values": {"tp_size": 8, ...}}    parsed, and what SGLang understood
    {"ok": false, "error": "argument --tp-size ..."}  what SGLang said

The parser is `sglang.srt.server_args.prepare_server_args`, what `sglang.launch_server` calls (argparse, then
ServerArgs). What it resolves later from the model and the accelerator (ServerArgs.resolve_once) needs a GPU
and is not run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
from typing import Any, NoReturn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FIELDS = (
    "model_path",
    "served_model_name",
    "host",
    "port",
    "tp_size",
    "pp_size",
    "context_length",
    "quantization",
    "dtype",
    "enable_metrics",
    "nnodes",
    "node_rank",
    "dist_init_addr",
)


class ParseError(Exception):
    pass


def _refuse(self: argparse.ArgumentParser, message: str) -> NoReturn:
    raise ParseError(message)


def judge(arguments: list[str]) -> dict[str, Any]:
    from sglang.srt.server_args import prepare_server_args  # noqa: PLC0415 - only in the tools' virtualenv

    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            parsed = prepare_server_args(arguments)
    except ParseError as error:
        return {"ok": False, "error": str(error)}
    except SystemExit as error:
        return {"ok": False, "error": f"exit {error.code}"}
    except Exception as error:  # a check of ServerArgs': its message is the verdict
        return {"ok": False, "error": f"{type(error).__name__}: {error}"}
    finally:
        logging.getLogger().handlers.clear()  # prepare_server_args configures logging each call
    values = {name: getattr(parsed, name, None) for name in FIELDS}
    return {"ok": True, "values": json.loads(json.dumps(values, default=str))}


def main() -> None:
    argparse.ArgumentParser.error = _refuse  # type: ignore[method-assign]  # argparse exits; we answer
    from sglang.srt.server_args import prepare_server_args  # noqa: F401, PLC0415 - imported before "ready"

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(judge(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
