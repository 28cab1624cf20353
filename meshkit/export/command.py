"""``meshkit export kubernetes|compose``: the command line of the exporters."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import SpecError
from .compose import render as render_compose
from .kubernetes import Options
from .kubernetes import render as render_kubernetes
from .plan import ExportError, Stack, plan


def add_parser(sub: Any) -> None:
    """Add ``export`` and its targets to the ``meshkit`` command's subparsers."""
    export = sub.add_parser("export", help="turn a services file into deployment manifests")
    targets = export.add_subparsers(dest="target", required=True)
    kube = targets.add_parser(
        "kubernetes",
        help="Kubernetes manifests (multi-document YAML for kubectl apply -f)",
        description="Print (or write) the manifests that run a services file on Kubernetes.",
    )
    _common(kube)
    kube.add_argument("--namespace", help="namespace of every object (default: kubectl's)")
    kube.add_argument(
        "--replicas", type=_positive, default=2, help="gateway replicas, the autoscaler's floor"
    )
    kube.add_argument(
        "--max-replicas", type=_positive, help="the autoscaler's ceiling (default: 4x replicas)"
    )
    kube.add_argument(
        "--secret", help="an existing Secret with the credentials (default: emit a template)"
    )
    kube.add_argument(
        "--service-monitor", action="store_true", help="add a Prometheus Operator ServiceMonitor"
    )
    kube.set_defaults(func=cmd_export, render=_kubernetes)
    compose = targets.add_parser(
        "compose",
        help="a Docker Compose file from the same plan as the Kubernetes manifests",
        description="Print (or write) a Compose file that runs a services file.",
    )
    _common(compose)
    compose.set_defaults(func=cmd_export, render=_compose)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", default="services.yaml")
    parser.add_argument("--image", help="gateway image (default: meshkit:VERSION)")
    parser.add_argument("--model-image", help="model server image (default: meshkit-local:VERSION)")
    parser.add_argument("--name", default="meshkit", help="prefix of the objects' names")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="give a variable the file reads this value instead of its default (repeatable)",
    )
    parser.add_argument("--out", help="write to this file instead of standard output")


def cmd_export(args: argparse.Namespace) -> int:
    """Plan the stack, render it, print or write it; problems go to stderr, exit 1."""
    try:
        stack = plan(args.file, name=args.name, env=_pairs(args.env))
        replicas = getattr(args, "replicas", 2)
        ceiling = getattr(args, "max_replicas", None)
        if ceiling is not None and ceiling < replicas:
            raise ExportError(
                f"--max-replicas {ceiling} is below --replicas {replicas}", param="max_replicas"
            )
    except SpecError as exc:
        print(f"{args.file}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        print("  (values: the file's defaults, and --env NAME=VALUE)", file=sys.stderr)
        return 1
    except ExportError as exc:
        print(f"{args.file}: {exc.message}", file=sys.stderr)
        return 1
    defaults = Options()
    options = Options(
        image=args.image or defaults.image,
        model_image=args.model_image or defaults.model_image,
        namespace=getattr(args, "namespace", None),
        replicas=replicas,
        max_replicas=ceiling,
        secret=getattr(args, "secret", None),
        service_monitor=getattr(args, "service_monitor", False),
    )
    out = Path(args.out) if args.out else None
    text: str = args.render(stack, options, out)
    if out is not None:
        out.write_text(text, encoding="utf-8")
        print(f"{out}: written", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _kubernetes(stack: Stack, options: Options, out: Path | None) -> str:
    return render_kubernetes(stack, options)


def _compose(stack: Stack, options: Options, out: Path | None) -> str:
    return render_compose(stack, options, base=out.parent if out else None)


def _pairs(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ExportError(f"--env {item!r}: write NAME=VALUE", param="env")
        out[name] = value
    return out


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value
