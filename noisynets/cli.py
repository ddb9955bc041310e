"""The ``noisynets`` command: ``train`` (the main job) and the tools around it.

* ``noisynets train ...``: train a network; the run folder gets ``trace.h5`` among others.
* ``noisynets inspect FILE``: what a trace file holds, and its last metrics
  (``traces.TraceReader.describe``).
* ``noisynets plot FILE [-o OUT.png]``: the figure of a trace file (``plots.trace_figure``).
* ``noisynets export FILE --format {npz,csv,nwb} [-o OUT]``: the file's data for other tools
  (``export.export_npz``, ``export.export_csv``, ``export_nwb.export_nwb``; docs/traces.md
  describes the layouts); ``noisynets export RUN_DIR --format nir [-o OUT.nir]``: a trained
  spiking network as a NIR graph (``export_nir.export_run``).
* ``noisynets predict RUN_DIR --input FILE [-o OUT]``: a trained run's labels and scores (or
  regression outputs) for the samples in a .npy, .npz or .csv file (``inference.predict``).
* ``noisynets bench [--json]``: the step time, FLOPs and memory of every rule (``bench``).
* ``noisynets sweep SWEEP.toml [--out DIR]``: every combination of a grid of settings, each an
  ordinary run, on a local or a running Dask cluster (``sweep``).

This module only parses the command line and calls the library. ``inspect``, ``plot`` and
``export`` read through ``traces.TraceReader``, so they also read a file whose run is still
writing it, or was killed: they see the complete records and evaluations.

A user mistake (an unknown name, a bad number, a missing or corrupt data file, a file that is
not a trace, an output that cannot be written) prints one line, ``noisynets: error: ...``, and
exits with status 2; it never shows a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from noisynets.bench import add_arguments as add_bench_arguments
from noisynets.config import (  # the argparse types: the settings' own checks
    DEVICES,
    OPTIMIZERS,
    SCHEDULES,
    TrainConfig,
    load_toml,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    thread_count,
)
from noisynets.core.losses import LOSS_NAMES
from noisynets.core.noise import DEVICE_NOISES, GENERATORS, NOISES
from noisynets.core.precision import PRECISIONS
from noisynets.core.steps import ENCODINGS, READOUTS
from noisynets.core.units import RESETS, UNITS
from noisynets.data import DATASETS, TEACHER_KEYS
from noisynets.files import check_output
from noisynets.models import ARCHS
from noisynets.rules import RULES


class UsageError(Exception):
    """A mistake in the command line: reported in one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage dump) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--config", metavar="FILE.toml",
                   help="read settings from a TOML file (keys: the long option names with "
                        "underscores); options given on the command line win")
    p.add_argument("--algo", choices=RULES, type=str.lower,
                   help=f"learning rule, any case (default {d.algo})")
    p.add_argument("--dataset", metavar="NAME",
                   help=f"data set: {', '.join(DATASETS)}; teacher:key=value,... sets the "
                        f"teacher-student task ({', '.join(TEACHER_KEYS)}) (default {d.dataset})")
    p.add_argument("--data-root", metavar="DIR", help="folder holding the data set's files")
    p.add_argument("--arch", choices=ARCHS,
                   help="built-in network: mlp (dense, --hidden) or conv (two conv layers and "
                        "a linear readout) (default mlp)")
    p.add_argument("--model", metavar="FILE.py:NAME",
                   help="train your own nn.Module: NAME() in FILE.py builds it (a function or "
                        "a class, called with no arguments)")
    p.add_argument("--hidden", type=positive_int, nargs="+", metavar="N",
                   help="hidden layer sizes of the mlp (default: the data set's preset)")
    p.add_argument("--epochs", type=positive_int, help="epochs (default: preset)")
    p.add_argument("--batch-size", type=positive_int, help="batch size (default: preset)")
    p.add_argument("--lr", type=positive_float, help="learning rate (default: preset)")
    p.add_argument("--decor-lr", type=nonnegative_float,
                   help="decorrelation learning rate eta_R (default: preset)")
    p.add_argument("--decor-fraction", type=positive_float,
                   help="share of the batch used for the correlation estimate, in (0, 1]")
    p.add_argument("--noise", metavar="SPEC",
                   help="intrinsic node noise: NAME or NAME:key=value,... and sums joined by +; "
                        f"names: {', '.join(NOISES + DEVICE_NOISES)} (mtj: a magnetic tunnel "
                        "junction; replay:file=F.npy|F.h5: recorded noise; default gaussian)")
    p.add_argument("--noise-std", type=positive_float, help="noise scale s (default: preset)")
    p.add_argument("--readout-noise-std", type=positive_float, metavar="S",
                   help="noise scale of the readout layer's nodes, where it differs from "
                        "--noise-std (default: preset; a spiking readout's)")
    p.add_argument("--weight-noise", metavar="SPEC",
                   help="noise in the weights, intrinsic: pcm or pcm:prog=1,read=1,drift=1,"
                        "time=SECONDS,gmax=25,compensate=0 (IBM aihwkit's PCM model; none)")
    p.add_argument("--adc", metavar="SPEC",
                   help="read the observed activities through an ADC: BITS or bits=B,range=R "
                        "(signed, full scale +-R, default 4; none)")
    p.add_argument("--noise-samples", type=positive_int,
                   help="noisy passes K per step (default: the preset; 1, and 4 for the "
                        "perturbation rules with --arch conv on the digits)")
    p.add_argument("--antithetic", action=argparse.BooleanOptionalAction, default=None,
                   help="draw the K noisy passes as K antithetic pairs (eps, -eps): 2K noisy "
                        "passes; needs controllable zero-mean noise (not --both-noisy); "
                        "perturbation rules only (default: the preset, off)")
    p.add_argument("--local-losses", action="store_true", default=None,
                   help="give every hidden layer a linear readout head whose loss drives that "
                        "layer's estimate (local learning, fewer nodes per estimate); anp, "
                        "danp, dense layers only (off)")
    p.add_argument("--both-noisy", action="store_true", default=None,
                   help="the noise cannot be switched off: both passes are noisy (anp, danp)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="torch optimizer (adam)")
    p.add_argument("--weight-decay", type=nonnegative_float, metavar="L",
                   help="weight decay lambda (0): adam, sgd add lambda*w to the estimate; "
                        "adamw decays the weights apart from it")
    p.add_argument("--momentum", type=nonnegative_float, metavar="M",
                   help="momentum of --optimizer sgd, in [0, 1) (0)")
    p.add_argument("--lr-schedule", choices=SCHEDULES,
                   help="learning rate by epoch (torch.optim.lr_scheduler): constant, cosine "
                        "(to near 0 at the last epoch), step (times --lr-gamma every "
                        "--lr-step epochs), exponential (times --lr-gamma every epoch) "
                        "(default: the preset; constant, cosine for randman)")
    p.add_argument("--lr-step", type=positive_int, metavar="E",
                   help="epochs between the step schedule's decays (a third of the epochs)")
    p.add_argument("--lr-gamma", type=positive_float, metavar="G",
                   help="the factor of the step (0.1) and exponential (0.9) schedules")
    p.add_argument("--clip-grad", type=positive_float, metavar="MAX_NORM",
                   help="scale the estimates down to this total norm before each update, as "
                        "torch.nn.utils.clip_grad_norm_ (off)")
    p.add_argument("--early-stopping", type=nonnegative_int, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without a new lowest validation loss "
                        "(needs --val-fraction; 0: off)")
    p.add_argument("--probe-batches", type=positive_int, metavar="P",
                   help="training batches the alignment and other diagnostics average over, "
                        "with the alignment's spread over them (4)")
    p.add_argument("--loss", choices=LOSS_NAMES, metavar="LOSS",
                   help="per-sample loss: ce (the default; mse for the teacher's regression), "
                        "mse, or one of snntorch's functional losses on a spiking model's "
                        "outputs over time: " + ", ".join(LOSS_NAMES[2:]))
    p.add_argument("--val-fraction", type=nonnegative_float, metavar="F",
                   help="hold out this share of the training set (the same samples every "
                        "run) and measure every epoch on it; the test split only at the end "
                        "(0: none, every epoch on the test split)")
    p.add_argument("--standardize", action=argparse.BooleanOptionalAction, default=None,
                   help="shift and scale the inputs by the training set's mean and std "
                        "(default: on for --arch conv)")
    p.add_argument("--unit", choices=UNITS, help="hidden units (leaky_relu)")
    p.add_argument("--time-steps", type=positive_int, help="time steps T (lif: 10, else 1)")
    p.add_argument("--encoding", choices=ENCODINGS, help="input over time: current | poisson")
    p.add_argument("--per-step-products", dest="per_step", action="store_true", default=None,
                   help="perturbation rules take per-step products g_W = sum_t e_t xh_t^T "
                        "(spiking layers, pooling before neurons at T > 1); the forward runs "
                        "twice on the same noise (default: the paper's summed products)")
    p.add_argument("--readout", choices=READOUTS,
                   help="a model ending with a spiking neuron: its logits are the spike "
                        "counts (spikes) or the peak membrane (membrane) (spikes)")
    p.add_argument("--beta", type=positive_float, help="LIF membrane decay (0.9)")
    p.add_argument("--threshold", type=positive_float, help="LIF threshold (1.0)")
    p.add_argument("--threshold-noise", type=nonnegative_float,
                   help="std of Gaussian noise on the LIF threshold (0)")
    p.add_argument("--reset", choices=RESETS,
                   help="LIF reset after a spike: subtract the threshold, or zero the membrane "
                        "(NIR's LIF; needed by export --format nir) (subtract)")
    p.add_argument("--seed", type=nonnegative_int, help="seed of weights, noise and data order (0)")
    p.add_argument("--device", choices=DEVICES, help="auto | cpu | cuda (auto)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="number format of the noisy passes' difference products: auto "
                        "(bfloat16 where the hardware makes it faster, else float32), "
                        "float32, bfloat16, float64 (auto)")
    p.add_argument("--threads", type=thread_count,
                   help="CPU threads for torch, at most 1024 (default: torch's choice, all "
                        "cores)")
    p.add_argument("--generator", choices=GENERATORS,
                   help="generator of the Gaussian noise: torch (torch's, the stream of every "
                        "recorded result) or fast (on a CPU a compiled SIMD generator, 3-4x "
                        "faster; on a GPU torch's) (torch)")
    p.add_argument("--out", metavar="DIR", help="run folder (default: a new one under ./runs/)")
    p.add_argument("--checkpoint-every", type=nonnegative_int, metavar="E",
                   help="write checkpoint.pt (and model.pt) every E epochs (1; 0: only the "
                        "model, at the end)")
    p.add_argument("--max-bad-steps", type=nonnegative_int, metavar="N",
                   help="stop after N steps in a row with a non-finite loss, activity or "
                        "estimate, each skipped (10; 0: no guard, no host sync per step)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in an existing --out folder")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last checkpoint, with its own "
                        "settings (only --threads may change; a --model run needs --model "
                        "again, or --trust-model)")
    p.add_argument("--trust-model", action="store_true",
                   help="with --resume: import the model file the run folder names without "
                        "naming it again (it runs that file's code)")
    p.add_argument("--trace-every", type=nonnegative_int,
                   help="trace the probe samples every N steps into trace.h5 (50; 0: off)")
    p.add_argument("--trace-probe", type=positive_int, help="probe samples traced (16)")
    p.add_argument("--trace-layers", type=positive_int, nargs="+", metavar="K",
                   help="layers to trace, numbered from 1 (all)")
    p.add_argument("--trace-units", type=nonnegative_int,
                   help="most units (and inputs) traced per layer, spread evenly (256; 0: all)")
    p.add_argument("--spike-events", action="store_true", default=None,
                   help="also store spikes as event lists (record, time, sample, unit)")
    p.add_argument("--figures", action=argparse.BooleanOptionalAction, default=None,
                   help="draw learning_curve.png and trace.png at the end (on; --no-figures "
                        "saves a second or two per run, e.g. in large sweeps)")
    p.add_argument("--tensorboard", action="store_true", default=None,
                   help="also write TensorBoard event files to RUN_DIR/tensorboard (needs "
                        "pip install 'noisynets[tensorboard]')")
    p.add_argument("--json", action="store_true",
                   help="print the result as one JSON object on the last line of stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_consent_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """--model and --trust-model of a command that loads a trained run's model.pt."""
    parser.add_argument("--model", metavar="FILE.py:FUNCTION",
                        help=prefix + "the model file of a run trained with --model, named "
                             "again: it must be the file the run started with")
    parser.add_argument("--trust-model", action="store_true",
                        help=prefix + "import the model file the run folder names without "
                             "naming it again (it runs that file's code)")


def make_parser() -> Parser:
    import noisynets

    parser = Parser(
        prog="noisynets", description="Learning in noisy networks by node perturbation. "
        "The main job: noisynets train."
    )
    parser.add_argument("--version", action="version",
                        version=f"noisynets {noisynets.__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=Parser)
    train = sub.add_parser("train", help="train a network (the main job)")
    add_train_arguments(train)
    trace_file = "a trace file (the trace.h5 of a run folder), also one still being written"
    inspect = sub.add_parser("inspect", help="what a trace file holds, and its last metrics")
    inspect.add_argument("file", metavar="FILE", help=trace_file)
    plot = sub.add_parser("plot", help="draw the figure of a trace file (PNG)")
    plot.add_argument("file", metavar="FILE", help=trace_file)
    plot.add_argument("-o", "--output", metavar="OUT.png",
                      help="the figure (default: FILE's name with .png, beside it)")
    export = sub.add_parser("export", help="write a trace file's data as .npz, CSV or NWB, "
                                           "or a trained spiking run as a NIR graph")
    export.add_argument("file", metavar="FILE", help=trace_file + "; for --format nir: a "
                        "run folder (it holds model.pt)")
    export.add_argument("--format", required=True, choices=EXPORT_FORMATS,
                        help="npz: one archive of every dataset; csv: a folder of CSV files; "
                             "nwb: a Neurodata Without Borders file (spikes in its Units "
                             "table; needs pip install 'noisynets[nwb]'); nir: the run's "
                             "spiking network, decorrelation folded in (needs pip install "
                             "'noisynets[nir]')")
    export.add_argument("-o", "--output", metavar="OUT",
                        help="the .npz file, the CSV folder or the .nwb file (default: beside "
                             "FILE, FILE's name with .npz, _csv or .nwb); the .nir file "
                             "(default: RUN_DIR/model.nir)")
    export.add_argument("--dt", type=positive_float, metavar="SECONDS",
                        help="nwb: seconds per simulated time step, the file's clock (0.001)")
    add_consent_arguments(export, "nir: ")
    predict = sub.add_parser("predict", help="a trained run's labels and scores for a file "
                                             "of inputs")
    predict.add_argument("run", metavar="RUN_DIR", help="a run folder (it holds model.pt)")
    predict.add_argument("--input", required=True, metavar="FILE",
                         help="the samples: .npy, .npz (array x) or .csv (one flattened "
                              "sample per row), raw as the data set's (the run's "
                              "standardisation is applied)")
    predict.add_argument("-o", "--output", metavar="OUT",
                         help=".csv (label, score_0, ...) or .npz (labels, scores) (default: "
                              "beside FILE, FILE's name with _predictions.csv)")
    predict.add_argument("--out-of-range", choices=("warn", "refuse", "ignore"),
                         default="warn",
                         help="inputs far outside the range of the training inputs (raw "
                              "0..16 pixels where training used pixels / 16): one warning "
                              "line (default), an error, or nothing")
    add_consent_arguments(predict)
    evaluate = sub.add_parser("evaluate", help="measure a run's saved model on test data")
    evaluate.add_argument("run", metavar="RUN_DIR", help="a run folder (it holds model.pt)")
    evaluate.add_argument("--dataset", metavar="NAME",
                          help="another data set of the same shapes (default: the run's)")
    evaluate.add_argument("--data-root", metavar="DIR", help="folder holding its files")
    evaluate.add_argument("--json", action="store_true",
                          help="print the result as one JSON object")
    add_consent_arguments(evaluate)
    bench = sub.add_parser("bench", help="time a training step of every rule, in one run")
    add_bench_arguments(bench)
    sweep = sub.add_parser("sweep", help="run every combination of a grid of settings")
    sweep.add_argument("file", metavar="SWEEP.toml",
                       help="a TOML file: [grid] (lists of values to combine) and [train] "
                            "(settings all runs share), keys as in train --config")
    sweep.add_argument("--out", metavar="DIR",
                       help="folder of the sweep: a run folder per combination and the "
                            "summary (default: runs/<SWEEP>); finished runs there are skipped")
    sweep.add_argument("--workers", type=positive_int, metavar="N",
                       help="runs at once on an embedded local Dask cluster (default: one per "
                            "core, at most one per run; 1: in this process, no cluster)")
    sweep.add_argument("--scheduler", metavar="ADDRESS",
                       help="send the runs to the running Dask cluster at ADDRESS, e.g. "
                            "tcp://10.0.0.5:8786 (dask-jobqueue, Kubernetes, a set of machines)")
    sweep.add_argument("--json", action="store_true",
                       help="print the result as one JSON object on the last line of stdout")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults, then the TOML file, then the command line."""
    fields = load_toml(args.config) if args.config is not None else {}
    for name in TrainConfig.__dataclass_fields__:
        value = getattr(args, name, None)
        if value is not None:
            fields[name] = value
    try:
        return TrainConfig(**fields)
    except TypeError as e:
        raise ValueError(str(e)) from None


# Options --resume takes along: they choose how to run, not what the run is.
RESUME_OPTIONS = ("resume", "threads", "json", "no_progress", "config", "model",
                  "trust_model")


def cmd_train(args: argparse.Namespace) -> int:
    from noisynets.parallel import is_main_process
    from noisynets.run import plural, resume, strict_json, train

    progress = not args.no_progress and sys.stderr.isatty()
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    if args.resume is not None:
        given = [f"--{name.replace('_', '-')}" for name, value in vars(args).items()
                 if name not in RESUME_OPTIONS and name != "command"
                 and value not in (None, False)]
        if given or args.config:
            raise UsageError(f"--resume continues a run with its own settings: leave out "
                             f"{', '.join(given + (['--config'] if args.config else []))}")
        result = resume(args.resume, progress=progress, log=log, threads=args.threads,
                        model=args.model, trust_model=args.trust_model)
    else:
        if args.trust_model:
            raise UsageError("--trust-model goes with --resume (a new run names its --model)")
        result = train(config_from_args(args), progress=progress, log=log,
                       overwrite=args.overwrite)
    if not is_main_process():  # data-parallel: rank 0 reports
        return 0
    summary = result.summary()
    if args.json:
        print(json.dumps(strict_json(summary), allow_nan=False))
    else:
        if summary["test_accuracy"] is None:  # regression
            score = f"final test loss {summary['test_loss']:.4g} ({summary['config']['loss']})"
        else:
            score = f"final test accuracy {summary['test_accuracy']:.4f}"
        print(f"{score} after {plural(summary['epochs'], 'epoch')} in "
              f"{summary['seconds']:.1f} s; results in {summary['out']}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from noisynets.run import evaluate_run, strict_json

    report = evaluate_run(args.run, dataset=args.dataset, data_root=args.data_root,
                          model=args.model, trust_model=args.trust_model)
    if args.json:
        print(json.dumps(strict_json(report), allow_nan=False))
    else:
        accuracy = ("" if report["test_accuracy"] is None
                    else f", test accuracy {report['test_accuracy']:.4f}")
        print(f"{report['run']}: on the test split of {report['dataset']} "
              f"({report['samples']} samples, {report['data_files']}): test loss "
              f"{report['test_loss']:.4f}{accuracy}")
    return 0


# --- inspect, plot, export -----------------------------------------------------------------

EXPORT_FORMATS: tuple[str, ...] = ("npz", "csv", "nwb", "nir")


def cmd_inspect(args: argparse.Namespace) -> int:
    from noisynets.traces import TraceReader

    print(TraceReader(args.file).describe())
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from noisynets.plots import trace_figure
    from noisynets.traces import TraceReader

    reader = TraceReader(args.file)
    out = Path(args.output) if args.output else reader.path.with_suffix(".png")
    check_output(out, [reader.path], redraws="trace.png")
    print(f"figure written to {trace_figure(reader, out)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from noisynets.export import export_csv, export_npz
    from noisynets.traces import TraceReader

    if args.dt is not None and args.format != "nwb":
        raise UsageError("--dt sets the clock of an NWB file: use it with --format nwb")
    if args.format == "nir":
        from noisynets.export_nir import export_run

        if not Path(args.file).is_dir():
            raise ValueError(f"--format nir exports a run: {args.file!r} is not a run folder")
        out = Path(args.output) if args.output else Path(args.file) / "model.nir"
        print(f"nir export written to "
              f"{export_run(args.file, out, args.model, args.trust_model)}")
        return 0
    if args.model is not None or args.trust_model:
        raise UsageError("--model and --trust-model go with --format nir (a run folder)")
    reader = TraceReader(args.file)
    if args.format == "npz":
        out = Path(args.output) if args.output else reader.path.with_suffix(".npz")
        check_output(out, [reader.path])
        export_npz(reader, out)
    elif args.format == "nwb":
        from noisynets.export_nwb import DEFAULT_DT, export_nwb

        out = Path(args.output) if args.output else reader.path.with_suffix(".nwb")
        check_output(out, [reader.path])
        export_nwb(reader, out, DEFAULT_DT if args.dt is None else args.dt)
    else:  # export_csv creates the folder, or says why it cannot
        out = (Path(args.output) if args.output
               else reader.path.with_name(reader.path.stem + "_csv"))
        check_output(out, [reader.path], folder=True)
        export_csv(reader, out)
    print(f"{args.format} export written to {out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from noisynets.inference import predict

    written = predict(args.run, args.input, args.output, args.model, args.trust_model,
                      args.out_of_range,
                      lambda line: print(f"noisynets: warning: {line}", file=sys.stderr))
    print(f"predictions written to {written}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from noisynets.bench import Setup, check_memory, run
    from noisynets.run import choose_device

    device = choose_device(args.device)
    if args.quick:
        setup = Setup(hidden=[64, 64], batch_size=32, spiking_hidden=[32], time_steps=3,
                      long_time_steps=[6, 12], spiking_batch=16, conv_batch=8, event_size=200,
                      precision=args.precision, generator=args.generator)
        rounds = 3
    else:
        setup = Setup(hidden=list(args.hidden), batch_size=args.batch_size,
                      precision=args.precision, generator=args.generator)
        rounds = args.steps
    check_memory(setup)
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    memory = "none" if args.no_memory else "spiking" if args.quick else "all"
    try:
        summary = run(setup, device, rounds, memory=memory, log=log, rules=args.rules)
    except (MemoryError, RuntimeError) as e:  # torch.OutOfMemoryError is a RuntimeError
        if isinstance(e, RuntimeError) and "alloc" not in str(e) and "memory" not in str(e):
            raise
        raise ValueError(f"not enough memory for the benchmark's networks (--batch-size "
                         f"{setup.batch_size}, --hidden {' '.join(map(str, setup.hidden))}): "
                         "choose smaller ones") from None
    if args.json:
        print(json.dumps(summary))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from noisynets.sweep import as_dict, load_sweep, run_sweep

    if args.scheduler is not None and args.workers is not None:
        raise UsageError("--workers sizes the embedded local cluster; a running cluster "
                         "(--scheduler) has its own workers: leave out one of them")
    sweep = load_sweep(args.file)
    out = args.out if args.out is not None else str(Path("runs") / Path(args.file).stem)
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    progress = not args.no_progress and sys.stderr.isatty()
    result = run_sweep(sweep, out, workers=args.workers, scheduler=args.scheduler,
                       progress=progress, log=log)
    if args.json:
        print(json.dumps(as_dict(result), allow_nan=False))
    else:
        print((Path(out) / "summary.md").read_text(), end="")
        print(f"summary: {Path(out) / 'summary.md'}, {Path(out) / 'summary.csv'}, "
              f"{Path(out) / 'summary.png'}")
    if result.failed:
        print(f"noisynets: {len(result.failed)} of {len(result.runs)} runs failed: "
              + "; ".join(f"{r['name']}: {r['error']}" for r in result.failed), file=sys.stderr)
        return 1
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "inspect": cmd_inspect,
            "plot": cmd_plot, "export": cmd_export, "predict": cmd_predict, "bench": cmd_bench,
            "sweep": cmd_sweep}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``noisynets`` console script; returns the exit status."""
    from noisynets.run import DivergenceError

    argv = list(sys.argv[1:] if argv is None else argv)
    if hasattr(sys.stdout, "reconfigure"):  # redirected too: every line as it is printed
        sys.stdout.reconfigure(line_buffering=True)
    parser = make_parser()
    if not argv:  # no command: say what there is, start nothing
        parser.print_help()
        return 0
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.error("name a command: " + ", ".join(COMMANDS))
        return COMMANDS[args.command](args)
    except (UsageError, ValueError) as e:
        message = " ".join(str(e).split())
        print(f"noisynets: error: {message}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the library did not name itself: too long, unwritable, ...
        where = f" {e.filename!r}" if e.filename else ""
        print(f"noisynets: error: cannot use{where}: {e.strerror or e}; name another path",
              file=sys.stderr)
        return 2
    except DivergenceError as e:
        print(f"noisynets: {' '.join(str(e).split())}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("noisynets: interrupted; what was measured so far is in the run folder",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
