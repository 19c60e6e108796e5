"""The ``jaxnoise`` command: one verb per job.

    jaxnoise train --config quickstart [--config.FIELD=VALUE ...] [--workdir DIR] [--fresh]
    jaxnoise report WORKDIR [--threshold T | --count N] [--out DIR]
    jaxnoise predict WORKDIR --inputs PATH [--out FILE]
    jaxnoise find-issues --labels FILE (--pred-probs | --features | --losses) FILE [--out CSV]

``python -m jaxnoise.cli`` is the same command, and ``python main.py ARGS`` in a clone is
``jaxnoise train ARGS``. Each verb is a module of this package with ``run(argv, prog)``; this one
imports nothing heavy, so a Ctrl-C while the verb's imports load is one line (exit 130).
"""

from __future__ import annotations

import difflib
import importlib
import os
import signal
import sys

# verb -> (module of jaxnoise.cli with run(argv, prog), --help's line)
VERBS = {
    "train": ("train", "train a run, or resume it in its workdir: --config NAME|FILE "
              "[--config.FIELD=VALUE ...] [--workdir DIR] [--fresh]"),
    "report": ("report", "figures and label_issues.csv of a run: WORKDIR [--threshold T | "
               "--count N] [--out DIR]"),
    "predict": ("predict", "the run's model on new data: WORKDIR --inputs PATH [--out FILE]"),
    "find-issues": ("find_issues", "the wrong labels of a dataset without training: --labels "
                    "FILE (--pred-probs | --features | --losses) FILE [--out CSV]"),
}  # fmt: skip
HELP_FLAGS = ("-h", "--help", "-help", "help")


def interrupted_while_starting(signum, frame) -> None:
    """SIGINT before a run installs its own handlers: one line, exit 128 + signal."""
    print(
        f"interrupted ({signal.Signals(signum).name} while starting): nothing to save",
        file=sys.stderr,
        flush=True,
    )
    os._exit(128 + signum)


def help_text() -> str:
    """What ``jaxnoise --help`` prints."""
    width = max(map(len, VERBS))
    lines = [f"  {verb:<{width}}  {text}" for verb, (_, text) in VERBS.items()]
    return "\n".join(
        [
            "usage: jaxnoise VERB [ARGS ...]",
            "",
            "Learning with noisy labels (Arazo et al., ICML 2019; DivideMix) in JAX: train, list "
            "the labels that are probably wrong, predict with the trained model.",
            "",
            "verbs:",
            *lines,
            "",
            "jaxnoise VERB --help describes a verb; jaxnoise train --help lists the presets and "
            "every config field.",
        ]
    )


def refuse(message: str) -> int:
    """Print `error: message` as one line on stderr; the exit code 2."""
    print("error: " + " ".join(message.split()), file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """``jaxnoise VERB ARGS``: run the verb; its exit code (0 done, 2 refused, 1 failed)."""
    if argv is None:  # as a command (not called from Python): Ctrl-C while starting, one line
        signal.signal(signal.SIGINT, interrupted_while_starting)
        argv = sys.argv[1:]
    if not argv or argv[0] in HELP_FLAGS:
        print(help_text())
        return 0 if argv else 2
    verb = argv[0]
    if verb not in VERBS:
        close = difflib.get_close_matches(verb, list(VERBS), n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        return refuse(
            f"unknown verb {verb!r}{hint}; the verbs: {', '.join(VERBS)} (jaxnoise --help)"
        )
    module = importlib.import_module(f"jaxnoise.cli.{VERBS[verb][0]}")
    if verb != "train":  # train keeps the handler until the run installs its own
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            return module.run(argv[1:], prog=f"jaxnoise {verb}")
        except KeyboardInterrupt:
            print(f"interrupted: jaxnoise {verb} stopped", file=sys.stderr)
            return 128 + signal.SIGINT
    return module.run(argv[1:], prog=f"jaxnoise {verb}")
