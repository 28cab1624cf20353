"""``meshkit export kubernetes``: the command line of the exporters."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import SpecError
from .kubernetes import Options, render
from .plan import ExportError, plan


def add_parser(sub: Any) -> None:
    """Add ``export`` and its targets to the ``meshkit`` command's subparsers."""
    export = sub.add_parser("export", help="turn a services file into deployment manifests")
    targets = export.add_subparsers(dest="target", required=True)
    kube = targets.add_parser(
        "kubernetes",
        help="Kubernetes manifests (multi-document YAML for kubectl apply -f)",
        description="Print (or write) the manifests that run a services file on Kubernetes.",
    )
    kube.add_argument("file", nargs="?", default="services.yaml")
    kube.add_argument("--namespace", help="namespace of every object (default: kubectl's)")
    kube.add_argument("--image", help="gateway image (default: meshkit:VERSION)")
    kube.add_argument("--model-image", help="model server image (default: meshkit-local:VERSION)")
    kube.add_argument(
        "--replicas", type=_positive, default=2, help="gateway replicas, the autoscaler's floor"
    )
    kube.add_argument(
        "--max-replicas", type=_positive, help="the autoscaler's ceiling (default: 4x replicas)"
    )
    kube.add_argument("--name", default="meshkit", help="prefix of the objects' names")
    kube.add_argument(
        "--secret", help="an existing Secret with the credentials (default: emit a template)"
    )
    kube.add_argument(
        "--service-monitor", action="store_true", help="add a Prometheus Operator ServiceMonitor"
    )
    kube.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="give a variable the file reads this value instead of its default (repeatable)",
    )
    kube.add_argument("--out", help="write to this file instead of standard output")
    kube.set_defaults(func=cmd_kubernetes)


def cmd_kubernetes(args: argparse.Namespace) -> int:
    """Plan the stack, render it, print or write it; problems go to stderr, exit 1."""
    try:
        env = _pairs(args.env)
        stack = plan(args.file, name=args.name, env=env)
        if args.max_replicas is not None and args.max_replicas < args.replicas:
            raise ExportError(
                f"--max-replicas {args.max_replicas} is below --replicas {args.replicas}",
                param="max_replicas",
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
        namespace=args.namespace,
        replicas=args.replicas,
        max_replicas=args.max_replicas,
        secret=args.secret,
        service_monitor=args.service_monitor,
    )
    text = render(stack, options)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"{args.out}: {text.count(chr(10) + '---' + chr(10)) + 1} objects", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


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
