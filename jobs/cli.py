"""The `reelmill` command line."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import sys

from curation import config as config_lib
from curation.inputs import InputError
from jobs.job_configs import DedupConfig
from jobs.logs import configure_logging
from jobs.print_config import JOB_CONFIGS, config_yaml, job_config

OVERWRITE_HELP = (
    "start over: delete the run's own files in OUT (shards, manifests, markers, report, run.json; "
    "nothing else), refused where OUT holds no reelmill run"
)


def _add_curate(sub) -> None:
    p = sub.add_parser("curate", help="raw videos -> clip shards and manifests")
    p.add_argument("--input", "-i", nargs="+", help="directories, globs, manifests or files (required)")
    p.add_argument("--output", "-o", help="output directory or URI (OUT) (required)")
    p.add_argument("--config", default="default", help="preset name in configs/curate/ or a YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--videos-per-task", type=int, help="shorthand for --set input.videos_per_task=N")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument(
        "--keep-dropped", action="store_true", help="also write filtered-out clips to OUT/dropped/"
    )
    _add_ray(p)
    _add_subset(p, "input videos")
    _add_error_limit(p)
    _add_print_config(p)


def _add_print_config(p) -> None:
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the config the job would run with (defaults, --config, --set, flags) as YAML and exit, "
        "without starting Ray or touching OUT; --input and --output may be left out",
    )
    p.set_defaults(job_parser=p)  # for argparse's own message when --input or --output is missing


def _add_ray(p) -> None:
    p.add_argument("--num-cpus", type=int, help="CPUs for the embedded local Ray (default: all)")
    p.add_argument(
        "--dashboard",
        action="store_true",
        help="serve the embedded Ray's dashboard on 127.0.0.1 (local runs)",
    )
    p.add_argument(
        "--runtime-env",
        metavar="JSON_OR_FILE",
        help="a Ray runtime_env (inline JSON or a JSON/YAML file) for the job's workers: env_vars, pip, ...",
    )


def _add_error_limit(p) -> None:
    p.add_argument(
        "--max-error-fraction",
        type=float,
        default=1.0,
        metavar="F",
        help="exit with status 3 (after writing everything) when more than this share of the inputs "
        "ended in error (default 1.0: never)",
    )


def _add_subset(p, what: str) -> None:
    p.add_argument("--limit", type=int, help=f"process only the first N {what} (cost control)")
    p.add_argument(
        "--sample", type=float, metavar="FRACTION", help=f"process a deterministic fraction of the {what}"
    )


def _add_recaption(sub) -> None:
    p = sub.add_parser("recaption", help="caption the clips of webdataset shards again (new model or prompt)")
    p.add_argument(
        "--input", "-i", nargs="+", help="shard files, directories, globs, {000..009} or URLs (required)"
    )
    p.add_argument("--output", "-o", help="output directory or URI (OUT) (required)")
    p.add_argument("--config", default="default", help="preset name in configs/recaption/ or a YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    _add_ray(p)
    _add_subset(p, "samples")
    _add_error_limit(p)
    _add_print_config(p)


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="(re)build OUT/report/ (index.html, report.json) from a run's outputs")
    p.add_argument("output", metavar="OUT", help="a curate or recaption output directory or URI")
    p.add_argument(
        "--compare", metavar="OTHER_OUT", help="put another run beside this one (e.g. another captioner)"
    )
    p.add_argument(
        "--max-clips", type=int, help="shorthand for --set report.max_clips=N (clips sampled for alignment)"
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="report.KEY=VALUE")
    p.add_argument(
        "--serve",
        action="store_true",
        help="serve the clip browser over HTTP, clips streamed out of the shards, until Ctrl-C "
        "(builds the report first when there is none, or when report flags are given)",
    )
    p.add_argument("--port", type=int, help="with --serve: the port to listen on (default 8765; 0: any free)")
    p.add_argument(
        "--host", help="with --serve: the address to listen on (default 127.0.0.1, this machine only)"
    )


def _add_encode(sub) -> None:
    p = sub.add_parser(
        "encode", help="clip shards -> latent shards (VAE latents, text embeddings) for training"
    )
    p.add_argument("--input", "-i", nargs="+", help="a run's OUT, shard files, globs or URLs (required)")
    p.add_argument("--output", "-o", help="output directory or URI for the latent shards (required)")
    p.add_argument("--config", default="default", help="preset name in configs/encode/ or a YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--vae", metavar="MODEL", help="shorthand for --set vae.model=MODEL (hub id or directory)")
    p.add_argument("--text-encoder", metavar="MODEL", help="shorthand for --set text_encoder.model=MODEL")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    _add_ray(p)
    _add_error_limit(p)
    _add_print_config(p)


def _add_dedup(sub) -> None:
    p = sub.add_parser(
        "dedup", help="mark semantic near-duplicate clips of a run (OUT/manifest/dedup/, OUT/dedup/keep.txt)"
    )
    p.add_argument(
        "output", metavar="OUT", help="a curate output directory or URI (with manifest/embeddings/)"
    )
    p.add_argument("--config", default="default", help="preset name in configs/dedup/ or a YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--threshold", type=float, help="shorthand for --set threshold=X (cosine similarity)")
    p.add_argument(
        "--materialize",
        metavar="DIR",
        help="also write the shards again without the duplicates to DIR/shards/",
    )
    _add_ray(p)
    _add_error_limit(p)


def _add_train(sub) -> None:
    sub.add_parser(
        "train",
        help="LightningCLI: reelmill train fit --config configs/train/dit-tiny-cpu.yaml --data.shards ...",
        add_help=False,
    )


def _add_sample(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="prompts to mp4s with a trained VideoDiT: text-to-video, or from an image, a clip to extend, "
        "keyframes, a clip to inpaint, or a long video by keyframes",
    )
    p.add_argument(
        "--ckpt", required=True, help="a checkpoint written by reelmill train, or a reelmill export DIR"
    )
    p.add_argument("--prompt", required=True, action="append", help="repeat for several videos")
    p.add_argument("--output", "-o", required=True, help="the mp4 to write (name-N.mp4 for several prompts)")
    p.add_argument("--frames", type=int, dest="num_frames", help="default: the clip length it trained on")
    p.add_argument("--height", type=int, help="default: the size it trained on")
    p.add_argument("--width", type=int)
    p.add_argument("--fps", type=float, help="default: the frame rate it trained on")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (1: none)")
    p.add_argument("--method", choices=["euler", "heun"], default="euler")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1 ...")
    p.add_argument("--no-ema", action="store_true", help="sample the live weights instead of the EMA")
    p.add_argument("--vae-model", help="load the VAE from here instead of the checkpoint's model.vae.model")
    p.add_argument("--text-encoder-model", help="likewise for model.text_encoder.model")
    modes = p.add_argument_group(
        "conditioning (one at most; inputs are resized to cover the clip size and centre-cropped)"
    )
    mode = modes.add_mutually_exclusive_group()
    mode.add_argument("--image", metavar="IMG", help="image-to-video: IMG is the first frame")
    mode.add_argument(
        "--extend", metavar="CLIP", help="continue CLIP by --seconds; writes CLIP followed by the new frames"
    )
    mode.add_argument(
        "--keyframes",
        metavar="IMG",
        nargs="+",
        help="two or more images spread evenly over the clip, first and last included",
    )
    mode.add_argument(
        "--inpaint", metavar="CLIP", help="repaint CLIP's first clip length where --mask is white"
    )
    mode.add_argument(
        "--long",
        type=int,
        metavar="N",
        help="a video of N clip lengths: keyframes from a first clip, then each of the N gaps interpolated",
    )
    modes.add_argument("--seconds", type=float, help="with --extend: how many seconds to add")
    modes.add_argument(
        "--mask",
        metavar="MASK",
        help="with --inpaint: an image (every frame) or a video (per frame); white = repaint",
    )


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export", help="a checkpoint to a model directory: safetensors + config.json (save_pretrained)"
    )
    p.add_argument("ckpt", metavar="CKPT", help="a checkpoint written by reelmill train")
    p.add_argument("directory", metavar="DIR", help="the directory to write (new or empty)")
    p.add_argument("--no-ema", action="store_true", help="export the live weights instead of the EMA")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in DIR")


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval", help="sample held-out prompts and measure FVD, CLIPSIM, subject consistency, flicker"
    )
    p.add_argument(
        "--ckpt", required=True, help="a checkpoint written by reelmill train, or a reelmill export"
    )
    prompts = p.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompts", metavar="FILE", help="a text file of prompts, one a line")
    prompts.add_argument("--val-shards", metavar="SHARDS", help="held-out shards: their first captions")
    p.add_argument("--real", required=True, metavar="SHARDS", help="curated shards (or OUT) of real clips")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="eval.json, samples/, index.html")
    p.add_argument("--num-samples", type=int, default=16, help="prompts sampled (default 16)")
    p.add_argument("--num-real", type=int, default=64, help="real clips decoded (default 64)")
    p.add_argument("--batch-size", type=int, default=4, help="prompts per sampling batch")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (1: none)")
    p.add_argument("--seed", type=int, default=0, help="sampling batch k is seeded with SEED + k")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1 ...")
    p.add_argument("--no-ema", action="store_true", help="sample the live weights instead of the EMA")
    p.add_argument("--config", default="default", help="preset name in configs/eval/ or a YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--vae-model", help="load the VAE from here instead of the checkpoint's model.vae.model")
    p.add_argument("--text-encoder-model", help="likewise for model.text_encoder.model")


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="make sample videos and run the whole pipeline on them")
    p.add_argument("--output", "-o", default="demo_out")
    _add_ray(p)


def _version() -> str:
    try:
        return importlib.metadata.version("reelmill")
    except importlib.metadata.PackageNotFoundError:  # a checkout on sys.path without an install
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """Every command and flag except `train`'s, which are LightningCLI's."""
    parser = argparse.ArgumentParser(prog="reelmill", description=__doc__)
    parser.add_argument("--version", action="version", version=f"reelmill {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_curate(sub)
    _add_recaption(sub)
    _add_report(sub)
    _add_encode(sub)
    _add_dedup(sub)
    _add_train(sub)
    _add_sample(sub)
    _add_export(sub)
    _add_eval(sub)
    _add_demo(sub)
    return parser


def _require_paths(args: argparse.Namespace) -> None:
    """--input and --output are required to run a job, not to print its config: argparse's own message
    and exit status 2 when one is missing."""
    if args.command not in JOB_CONFIGS or args.print_config:
        return
    missing = [
        flag for flag, value in (("--input/-i", args.input), ("--output/-o", args.output)) if not value
    ]
    if missing:
        args.job_parser.error(f"the following arguments are required: {', '.join(missing)}")


def print_config(args: argparse.Namespace) -> int:
    """`--print-config`: the effective config as YAML on stdout; a bad key or value is exit status 2."""
    try:
        cfg = job_config(args)
    except config_lib.ConfigError as exc:
        print(f"reelmill {args.command}: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(config_yaml(args.command, cfg))
    return 0


def main(argv: list[str] | None = None) -> int:
    configure_logging()  # once, before any library logs: every line prints once
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:  # every further argument is LightningCLI's
        from jobs.train import main as train_main

        return train_main(argv[1:])
    args = parser.parse_args(argv)
    _require_paths(args)
    if getattr(args, "print_config", False):  # before Ray is imported, and OUT is never looked at
        return print_config(args)
    from captioning.report.collect import ReportError
    from jobs.curate import ResumeRefused  # heavy imports (ray) only once arguments parse
    from jobs.output_lock import OutputBusy

    limit = getattr(args, "max_error_fraction", 1.0)
    if not 0 <= limit <= 1:
        print(
            f"reelmill {args.command}: error: --max-error-fraction must be in [0, 1], got {limit}",
            file=sys.stderr,
        )
        return 2
    run = None
    try:
        if hasattr(args, "dashboard"):
            from jobs import ray_runtime

            ray_runtime.OPTIONS.dashboard = args.dashboard
            if args.runtime_env:
                ray_runtime.OPTIONS.runtime_env = ray_runtime.load_runtime_env(args.runtime_env)
        if args.command == "curate":
            from jobs.curate import run_curate

            cfg = job_config(args)
            run = run_curate(
                args.input, args.output, cfg, overwrite=args.overwrite, num_cpus=args.num_cpus,
                limit=args.limit, sample=args.sample,
            )  # fmt: skip
        elif args.command == "recaption":
            from jobs.recaption import run_recaption

            cfg = job_config(args)
            run = run_recaption(
                args.input, args.output, cfg, overwrite=args.overwrite, num_cpus=args.num_cpus,
                limit=args.limit, sample=args.sample,
            )  # fmt: skip
        elif args.command == "report":
            from jobs.report import run_report

            overrides = list(args.overrides)
            if args.max_clips is not None:
                overrides.append(f"report.max_clips={args.max_clips}")
            if not args.serve:
                if args.port is not None or args.host is not None:
                    raise config_lib.ConfigError("--port and --host go with --serve")
                run_report(args.output, overrides, compare=args.compare)
            else:
                from captioning.report.collect import open_run
                from captioning.report.serve import has_browser_page, serve
                from jobs.report import report_config

                port = 8765 if args.port is None else args.port
                if not 0 <= port <= 65535:
                    raise config_lib.ConfigError(f"--port {port}: must be in 0-65535 (0: any free port)")
                if overrides or args.compare or not has_browser_page(args.output):
                    run_report(args.output, overrides, compare=args.compare)
                cfg = report_config(open_run(args.output).config, overrides)
                return serve(args.output, args.host or "127.0.0.1", port, cfg)
        elif args.command == "encode":
            from jobs.encode import run_encode

            cfg = job_config(args)
            run = run_encode(args.input, args.output, cfg, overwrite=args.overwrite, num_cpus=args.num_cpus)
        elif args.command == "dedup":
            from jobs.dedup import run_dedup

            overrides = list(args.overrides)
            if args.threshold is not None:
                overrides.append(f"threshold={args.threshold}")
            cfg = config_lib.load(DedupConfig, "dedup", args.config, overrides)
            run = run_dedup(args.output, cfg, materialize=args.materialize, num_cpus=args.num_cpus)
        elif args.command == "sample":
            from jobs.sample import run_sample

            run_sample(
                args.ckpt, args.prompt, args.output, num_frames=args.num_frames, height=args.height,
                width=args.width, fps=args.fps, steps=args.steps, guidance=args.guidance, method=args.method,
                seed=args.seed, device=args.device, use_ema=not args.no_ema, vae_model=args.vae_model,
                text_encoder_model=args.text_encoder_model, image=args.image, extend=args.extend,
                seconds=args.seconds, keyframes=args.keyframes, inpaint=args.inpaint, mask=args.mask,
                long=args.long,
            )  # fmt: skip
        elif args.command == "export":
            from jobs.export import run_export

            run_export(args.ckpt, args.directory, use_ema=not args.no_ema, overwrite=args.overwrite)
        elif args.command == "eval":
            from jobs.eval import run_eval
            from training.evaluation.config import EvalConfig

            run_eval(
                args.ckpt, args.output, args.real, config_lib.load(EvalConfig, "eval", args.config, args.overrides),
                prompts_file=args.prompts, val_shards=args.val_shards, num_samples=args.num_samples,
                num_real=args.num_real, batch_size=args.batch_size, steps=args.steps, guidance=args.guidance,
                seed=args.seed, device=args.device, use_ema=not args.no_ema, vae_model=args.vae_model,
                text_encoder_model=args.text_encoder_model,
            )  # fmt: skip
        elif args.command == "demo":
            from jobs.demo import run_demo

            run_demo(args.output, num_cpus=args.num_cpus)
    except (config_lib.ConfigError, InputError, ResumeRefused, OutputBusy, ReportError) as exc:
        print(f"reelmill {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return error_exit_status(args.command, run, limit)


def error_exit_status(command: str, run: dict | None, limit: float) -> int:
    """3 when a finished job's share of inputs in error (run.json `errors.fraction`) is over `limit`, so a
    scheduler notices a run that wrote everything it could but lost too much; else 0."""
    errors = (run or {}).get("errors")
    if errors and errors["fraction"] > limit:
        print(
            f"reelmill {command}: {errors['in_error']} of {errors['items']} inputs in error "
            f"({errors['fraction']:.1%}), over --max-error-fraction {limit:g}: exit status 3",
            file=sys.stderr,
        )
        return 3
    return 0


def run() -> None:
    """The `reelmill` command: `main`, then an exit with its status that skips the interpreter's teardown.

    Every output is written and closed by the time `main` returns. What is left is the teardown of native
    libraries that keep threads of their own (Ray's core worker, torch's and OpenCV's thread pools), in
    an order Python does not control: a `reelmill demo` was seen to segfault there, after its last line,
    in one run of five. A scheduler reads the exit status, so it is the job's, not the teardown's. An
    exception out of `main` still ends the process the usual way, with its traceback."""
    status = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status or 0)


if __name__ == "__main__":
    run()
