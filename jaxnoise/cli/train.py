"""``jaxnoise train`` (and ``python main.py`` in a clone): train with noisy labels.

    jaxnoise train --config cifar10_m_dyr_h --config.noise=0.5
    python main.py --config configs/cifar10_m_dyr_h.py --config.noise=0.5   # the same, in a clone

``--config`` takes a preset's name (``jaxnoise/configs/NAME.py``; ``NAME:ARG`` passes an
argument to its ``get_config``) or a config file (``FILE`` or ``FILE:ARG``). The workdir
(default ``runs/<config name>-<data source>``) holds the resolved config, metrics.jsonl, the
checkpoints and the last epoch's per-sample arrays; re-running the same command resumes.
``--help`` lists every config field.

Exit codes: 0 finished; 2 the command line was refused (a flag, a config field or value, a file
the config names, a workdir holding another run, in use by another process, or not writable),
before anything was loaded or compiled; 1 failed later (data that cannot be loaded or prepared,
a diverged run, a checkpoint that could not be written); 143 / 130 stopped by SIGTERM / SIGINT
(with a checkpoint saved once training had started).
"""

import ast
import difflib
import os
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxnoise import config as config_lib  # the validator: imports no jax
from jaxnoise import configs as presets

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to an ml_collections config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory (default: runs/<config name>-<data source>)."
)
_FRESH = flags.DEFINE_bool("fresh", False, "Discard a previous run in the workdir and start again.")
flags.mark_flags_as_required(["config"])

PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # jaxnoise/
DEFAULT_CONFIG = os.path.join(presets.DIR, "default.py")
# Where each group of fields is set, with its comments: (heading, file, variable, prefix).
FIELD_SOURCES = (
    ("shared fields (jaxnoise/configs/default.py)", DEFAULT_CONFIG, "c", ""),
    ("config.bootstrap: CE, M, M-DYR-H, M-DYR-S, MD-DYR-SH (jaxnoise/bootstrap/config.py)",
     os.path.join(PACKAGE, "bootstrap", "config.py"), "b", "bootstrap."),
    ("config.dividemix: DivideMix (jaxnoise/dividemix/config.py)",
     os.path.join(PACKAGE, "dividemix", "config.py"), "d", "dividemix."),
)  # fmt: skip
HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "--helpfull", "-?")
SOURCE_HELP = {  # --help's line for each data source
    "tfds": "a tensorflow-datasets dataset (--config.data.name=cifar10, cifar100, ...); "
    "prepared on first use, which needs network access and TensorFlow: "
    "pip install 'jaxnoise[prepare]' (in a clone: pip install -e '.[prepare]')",
    "folder": "your own images: --config.data.root=ROOT with ROOT/{train,test}/<class>/<image>",
    "digits": "scikit-learn's embedded 8x8 digits (offline; --config quickstart)",
    "features": "your own embeddings, --config.data.features=FILE: an .npz with train_features "
    "(N, D), train_labels (N,), optionally test_features, test_labels (without them no test "
    "accuracy), class_names, train_ids (or a pair: data.features + data.test_features, each an "
    ".npz of features, labels or an .npy of features beside <stem>_labels.npy; the test side "
    "may be left out); model mlp or linear (--config features_m_dyr_h)",
}
PROG = "python main.py"  # how the command was called, for its messages (jaxnoise.cli sets it)


def refuse(message: str) -> None:
    """Print `error: message` as one line on stderr and exit with code 2."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    sys.exit(2)


# ------------------------------------------------------------------------------------------------
# --help: the config fields with their comments, read from configs/default.py.


def default_fields(
    path: str = DEFAULT_CONFIG, var: str = "c", prefix: str = ""
) -> list[tuple[str, str, str]]:
    """(field, default value, comment) of every field set as ``var.FIELD = value`` in a file,
    in order, named ``prefix + FIELD``.

    A field's comment is the one on its line plus the comment-only lines right below it.
    """
    with open(path) as f:
        source = f.read()
    lines = source.splitlines()
    out = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        target = node.targets[0]
        parts = []
        while isinstance(target, ast.Attribute):
            parts.append(target.attr)
            target = target.value
        if not (isinstance(target, ast.Name) and target.id == var and parts):
            continue
        if isinstance(node.value, ast.Call):  # c.data = ml_collections.ConfigDict()
            continue
        value = ast.get_source_segment(source, node.value) or ""
        line = lines[node.end_lineno - 1]
        comment = [line.split("#", 1)[1].strip()] if "#" in line[node.end_col_offset :] else []
        for nxt in lines[node.end_lineno :]:
            s = nxt.strip()
            if not s.startswith("#") or s.startswith("# ---"):
                break
            comment.append(s[1:].strip())
        out.append((node.lineno, prefix + ".".join(reversed(parts)), value, " ".join(comment)))
    return [t[1:] for t in sorted(out)]


def preset_lines() -> list[str]:
    """--help's list of the presets: name and the first line of its docstring."""
    names = presets.names()
    width = max(map(len, names))
    return [f"    {n:<{width}}  {presets.summary(n)}" for n in names]


def help_text() -> str:
    """What `jaxnoise train --help` (`python main.py --help`) prints."""
    from jaxnoise.data import SOURCES  # the sources the library really has

    out = [
        f"usage: {PROG} --config CONFIG [--config.FIELD=VALUE ...] [--workdir DIR] [--fresh]",
        "",
        "Learning with noisy labels (Arazo et al., ICML 2019) in JAX: train, fit the noise model "
        "after every epoch, correct the loss, and list the labels that are probably wrong.",
        "",
        "flags:",
        "  --config CONFIG        a preset's name (below; NAME:ARG passes an argument, e.g. "
        "cifar10n_ce:aggre), or a",
        "                         config file of your own, FILE or FILE:ARG (it may start from "
        "a preset: from",
        "                         jaxnoise.configs import default)",
        "  --config.FIELD=VALUE   override one field of it (the fields are below), each field "
        "once (a field",
        "                         given twice is refused: neither combined nor the last one "
        "winning); quote",
        "                         a tuple for the shell: '--config.mlp_hidden=(512,)'",
        "  --workdir DIR          run directory (default runs/<config name>-<data source>); "
        "re-running the same command resumes there",
        "  --fresh                discard the run in the workdir and start again",
        "  --help                 this text",
        "",
        "presets (jaxnoise/configs/NAME.py; in a clone also configs/NAME.py):",
        *preset_lines(),
        "",
        "data sources (--config.data.source=SOURCE):",
        *(f"  {s:<8} {SOURCE_HELP.get(s, 'see jaxnoise/configs/default.py')}" for s in SOURCES),
        "",
        "config fields (the defaults; each preset states what differs). A config has the",
        "shared fields and the block of its method: config.bootstrap or config.dividemix.",
    ]
    for heading, path, var, prefix in FIELD_SOURCES:
        out += ["", heading + ":"]
        for field, value, comment in default_fields(path, var, prefix):
            out.append(f"  {field} = {value}" + (f"  # {comment}" if comment else ""))
    return "\n".join(out + AFTER_A_RUN)


AFTER_A_RUN = [
    "",
    "after (or during) a run:",
    "  jaxnoise report WORKDIR [--threshold T | --count N]   figures and label_issues.csv of a "
    "run (as many samples as the noise model estimates wrong, p(noisy) > T, or the N most "
    "suspect; also: python -m jaxnoise.report WORKDIR)",
    "  jaxnoise predict WORKDIR --inputs PATH    the run's model on new data (.npy, .npz or an "
    "image folder): predictions.csv",
    "",
    "exit codes: 0 done; 2 command line refused; 1 failed (data, divergence); "
    "143 / 130 stopped by SIGTERM / SIGINT with a checkpoint saved (re-run to resume)",
]


# ------------------------------------------------------------------------------------------------
# Flag parsing: every refusal is one line.


def _config_overrides(argv: list[str]) -> list[str]:
    """The FIELD of every --config.FIELD[=VALUE] argument."""
    names = []
    for a in argv:
        for prefix in ("--config.", "-config."):
            if a.startswith(prefix):
                names.append(a[len(prefix) :].split("=", 1)[0])
    return names


def _config_path(argv: list[str]) -> tuple[int, str] | None:
    """(position in argv, value) of the --config argument."""
    for i, a in enumerate(argv):
        if a in ("--config", "-config") and i + 1 < len(argv):
            return i + 1, argv[i + 1]
        if a.startswith(("--config=", "-config=")):
            return i, a.split("=", 1)[1]
    return None


def resolve_config(value: str) -> str | None:
    """The config file (``FILE`` or ``FILE:ARG``) that ``--config value`` names: a file, else a
    preset's (``NAME`` or ``NAME:ARG``); None when it names neither."""
    file, sep, arg = value.partition(":")
    if os.path.isfile(file):
        return value
    preset = presets.path(file) if os.sep not in file and "/" not in file else None
    return None if preset is None else preset + sep + arg


def _config_argv(argv: list[str]) -> tuple[list[str], str]:
    """argv with the --config value resolved to its file (a preset's name replaced by its
    path), and the value as given; a missing or unknown config refused."""
    found = _config_path(argv[1:])
    if found is None:
        refuse(
            f"--config CONFIG is required, e.g. {PROG} --config quickstart; {PROG} --help "
            "lists the presets and fields"
        )
    i, value = found
    path = resolve_config(value)
    if path is None:
        refuse(
            f"--config {value}: no such file, and no preset of that name (the presets: "
            f"{', '.join(presets.names())}; {PROG} --help describes them)"
        )
    argv = list(argv)
    argv[i + 1] = path if argv[i + 1] == value else argv[i + 1].split("=", 1)[0] + "=" + path
    return argv, path


def _load_config(path: str):
    """The ConfigDict of a config file (``FILE`` or ``FILE:ARG``), as --config loads it."""
    import importlib.util

    file, _, arg = path.partition(":")
    try:
        spec = importlib.util.spec_from_file_location("_jaxnoise_config", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config(arg) if arg else module.get_config()
    except Exception as e:  # a config file that raises
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        refuse(f"--config {path}: {type(e).__name__}: {first}")


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with --help exiting 0 and every refusal one line with exit code 2."""
    if any(a in HELP_FLAGS for a in argv[1:]):
        print(help_text())
        sys.exit(0)
    argv, path = _config_argv(argv)
    config = _load_config(path)
    fields = sorted(config_lib.flatten(config.to_dict()))
    names = _config_overrides(argv[1:])
    for i, name in enumerate(names):
        if name not in fields:
            why = config_lib.foreign_field(name, config.method)
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            refuse(
                f"--config.{name}: {why or f'not a config field{hint}'}; {PROG} --help "
                "lists the fields"
            )
        if name in names[:i]:  # ml_collections would silently join two tuples into one
            refuse(
                f"--config.{name} is given twice: give each field once (ml_collections "
                "would join two tuples, e.g. (128,) and (512,) into (128, 512))"
            )
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        refuse(f"{e}; {PROG} --help lists the flags and fields")
    except Exception as e:  # a config file that raises, or an override ml_collections refuses
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        refuse(f"--config {path}: {type(e).__name__}: {first}")
    if len(rest) > 1:
        refuse(f"unexpected argument {rest[1]!r} (flags are --name=value)")
    return rest


# ------------------------------------------------------------------------------------------------
# The run.


def default_workdir(config) -> str:
    """runs/<config file name>-<data source>, e.g. runs/cifar10_m_dyr_h-tfds."""
    config_path = config_flags.get_config_filename(flags.FLAGS["config"])
    name = os.path.splitext(os.path.basename(config_path))[0]
    return os.path.join("runs", f"{name}-{config.data.source}")


def _first_missing_dir(path: str) -> str | None:
    """The outermost folder of `path` that does not exist yet (None if `path` exists)."""
    path = os.path.abspath(path)
    if os.path.exists(path):
        return None
    while not os.path.exists(os.path.dirname(path)):
        path = os.path.dirname(path)
    return path


def _remove_new_empty_dirs(top: str | None, workdir: str) -> None:
    """Remove the folders under `top` (created by this run) that hold no file, and `top`; the
    workdir's lock file goes too when it is all the workdir holds (the lock is released)."""
    if top is None or not os.path.isdir(top):
        return
    lock = os.path.join(workdir, ".lock")
    if os.path.isfile(lock) and os.listdir(workdir) == [".lock"]:
        os.remove(lock)
    for dirpath, _, _ in sorted(os.walk(top), key=lambda t: -len(t[0])):
        try:
            os.rmdir(dirpath)  # fails (and keeps it) unless empty
        except OSError:
            return


def main(argv):
    """Validate the config, then train and evaluate."""
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    from jaxnoise import config as config_lib
    from jaxnoise import workdir as workdir_lib

    config = _CONFIG.value
    try:
        config_lib.validate(config)  # before any data is loaded or anything is compiled
    except ValueError as e:
        refuse(e)

    from jaxnoise import data as data_lib
    from jaxnoise import inputs, loops, stops

    workdir = _WORKDIR.value or default_workdir(config)
    created = _first_missing_dir(workdir)  # e.g. runs/ of runs/quickstart-digits
    stops.at_idle_exit(lambda: _remove_new_empty_dirs(created, workdir))
    summary = None
    try:
        summary = loops.train_and_evaluate(config, workdir, fresh=_FRESH.value)
    except workdir_lib.SaveFailed as e:  # a disk that filled, or a filesystem gone read-only
        print("error: " + " ".join(str(e).split()), file=sys.stderr, flush=True)
        # The failed save's I/O threads go on failing for a moment ('Event loop is closed',
        # dropped by workdir.quiet_named_save_errors): the line above names the failure, so
        # the process ends here, before anything else they print (the lock goes with it).
        sys.stdout.flush()
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        os._exit(1)
    except (workdir_lib.WorkdirConflict, workdir_lib.WorkdirBusy, workdir_lib.WorkdirError) as e:
        refuse(e)  # before any data was loaded
    except (ValueError, FileNotFoundError, FloatingPointError, data_lib.DatasetUnavailable) as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # a second Ctrl-C: no new checkpoint, the last committed one stays
        print(f"interrupted: the last saved checkpoint in {workdir} is kept", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    finally:
        if summary is None or summary["checkpoint_at"] is None:
            _remove_new_empty_dirs(created, workdir)  # a failed start leaves no empty workdir
    if summary["interrupted"]:
        # Preempted (SIGTERM) or Ctrl-C: a checkpoint of the exact position was saved. Exit with
        # the shell's code for that signal (143 / 130), so schedulers and scripts can tell an
        # interrupted run (re-run the same command to resume) from a finished one (0).
        name = summary["signal"]  # None: another process of a multi-process job was signalled
        at = summary["checkpoint_at"]
        saved = f"the checkpoint at {at} is saved in {workdir}" if at else "nothing to save yet"
        print(
            f"stopped by {name or 'a signal to another process of the job'}: {saved}; re-run "
            "the same command to resume",
            file=sys.stderr,
        )
        sys.exit(128 + signal.Signals[name or "SIGTERM"].value)
    print(done_line(config, summary, workdir, inputs.labels_summary(config)))


def done_line(config, summary: dict, workdir: str, labels: str) -> str:
    """The last line of a finished run: accuracy ("no test set" without one), and the detection
    AUROC when the noise is known (else the noise model's estimate of the wrong labels)."""
    if summary.get("noise_known", True):
        detection = f"noise-detection AUROC {summary['auroc']:.4f}"
    else:
        detection = f"est. noisy {summary['est_noisy']:.1%} (which labels are wrong is unknown)"
    accuracy = "no test set"
    if summary.get("has_test", True):
        accuracy = f"best test acc {summary['best_acc']:.2f}% last {summary['last_acc']:.2f}%"
    return f"done: {config.method} {labels} {accuracy}  {detection}  workdir {workdir}"


def run(argv: list[str], prog: str = "jaxnoise train") -> None:
    """``PROG ARGV``: parse the flags and train (exits with the command's code)."""
    global PROG
    PROG = prog
    app.run(main, argv=[prog, *argv], flags_parser=parse_flags)
