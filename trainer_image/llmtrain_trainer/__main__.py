"""`python -m llmtrain_trainer --config cfg.json`, alone or under torchrun.

`python -m llmtrain_trainer export --checkpoint DIR --out DIR [--config cfg.json]` converts a checkpoint into a
Hugging Face Llama directory instead (see export.py).

The config is validated before torch is imported, so a bad config fails in well under a second with one line
naming the field, exit code 78 and a termination message the operator reads. Exit codes: 0 done, 78 bad config,
79 diverged (both permanent), 143 stopped by SIGTERM after saving a checkpoint, anything else transient.
"""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, load_config
from .exit_codes import EXIT_BAD_CONFIG, EXIT_DIVERGED, EXIT_SIGTERM, write_termination_message


def _fail(code: int, message: str) -> int:
    print(f"llmtrain: {message}", file=sys.stderr, flush=True)
    write_termination_message(code, message)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["export"]:
        from .export import main as export_main

        return export_main(argv[1:])
    parser = argparse.ArgumentParser(prog="llmtrain_trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="path to the TrainerConfig JSON")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        return _fail(EXIT_BAD_CONFIG, f"invalid config: {e}")

    import torch.distributed as dist

    from .distributed import StopRequest, setup_distributed
    from .train import Diverged, train

    stop = StopRequest()
    try:
        runtime = setup_distributed(cfg.training.collective_timeout_seconds)
    except ConfigError as e:
        return _fail(EXIT_BAD_CONFIG, f"invalid config: {e}")
    try:
        code = train(cfg, runtime, stop)
        if code == EXIT_SIGTERM:
            write_termination_message(code, "stopped by SIGTERM; state saved to the newest checkpoint")
        return code
    except ConfigError as e:
        return _fail(EXIT_BAD_CONFIG, f"invalid config: {e}")
    except Diverged as e:
        return _fail(EXIT_DIVERGED, f"diverged: {e}")
    except Exception as e:  # transient as far as we know: say what happened, let the traceback follow
        write_termination_message(1, f"{type(e).__name__}: {e}")
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
