"""``splinelens`` command line: train a net in spline coordinates, rerun the paper's experiments.

Every subcommand validates its input first (bad input: one line on stderr, exit 2, nothing written), then
writes its figures and JSON atomically into ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

from splinelens import data as data_mod
from splinelens.convert import build_model, canonical, eval_params, params_to_spline
from splinelens.errors import InputError
from splinelens.hessian import hessian_report
from splinelens.init_analysis import SCHEMES, breakpoint_ks, init_params, width_sweep
from splinelens.outputs import write_json
from splinelens.regimes import fit_adaptive_lr, regime_sweep
from splinelens.train import ntk_lambda_max, train


def _ints(text: str, field: str) -> list[int]:
    try:
        vals = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise InputError(f"{field}: expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise InputError(f"{field}: expected positive integers, got {text!r}")
    return vals


def _floats(text: str, field: str) -> list[float]:
    try:
        vals = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise InputError(f"{field}: expected comma-separated numbers, got {text!r}") from None
    if not vals or min(vals) <= 0:
        raise InputError(f"{field}: expected positive numbers, got {text!r}")
    return vals


def _scheme(name: str) -> str:
    if name not in SCHEMES:
        raise InputError(f"--init: unknown init {name!r}; expected one of {', '.join(SCHEMES)}")
    return name


def cmd_train(args: argparse.Namespace) -> dict:
    x, y = data_mod.load(args.data, args.seed)
    scheme = _scheme(args.init)
    if args.width < 1 or args.steps < 1 or args.lr <= 0 or args.scale <= 0:
        raise InputError("--width/--steps must be positive integers and --lr/--scale positive numbers")
    p0 = init_params(args.width, scheme, args.scale, np.random.default_rng(args.seed))
    lam = ntk_lambda_max(p0, x)
    traj = train(p0, x, y, args.steps, args.lr, args.log_every, args.method, progress=True)
    # the conversion claim, checked on the trained net: torch forward vs spline form on a dense grid
    grid = np.linspace(x.min() - 0.5, x.max() + 0.5, 4001)
    with torch.no_grad():
        f_net = build_model(traj.final)(torch.as_tensor(grid).reshape(-1, 1)).numpy().ravel()
    sp = params_to_spline(traj.final)
    f_spline = canonical(sp)(grid)
    rel = float(np.max(np.abs(f_net - f_spline)) / max(np.max(np.abs(f_net)), 1e-300))
    in_range = (sp.s != 0) & (sp.beta >= x.min()) & (sp.beta <= x.max())
    metrics = {
        "data": args.data,
        "n_data": int(x.size),
        "width": args.width,
        "init": scheme,
        "scale": args.scale,
        "steps": int(traj.steps[-1]),
        "lr": args.lr,
        "method": args.method,
        "seed": args.seed,
        "lr_times_lambda_max_at_init": args.lr * lam,
        "loss_initial": float(traj.loss[0]),
        "loss_final": float(traj.loss[-1]),
        "median_abs_dbeta": float(np.nanmedian(np.abs(traj.beta[-1] - traj.beta[0]))),
        "max_abs_dbeta": float(np.nanmax(np.abs(traj.beta[-1] - traj.beta[0]))),
        "in_range_breakpoints_final": int(in_range.sum()),
        "max_abs_balance_drift": float(np.max(np.abs(traj.balance[-1] - traj.balance[0]))),
        "spline_vs_network_rel_err": rel,
        "log": {"steps": traj.steps, "loss": traj.loss},
    }
    from splinelens import plots

    plots.plot_training(traj, x, y, f"{args.out}/training.png")
    if not args.no_video:
        metrics["video"] = plots.animate(traj, x, y, f"{args.out}/training", args.frames)
    np.savez_compressed(
        f"{args.out}/trajectory.npz",
        steps=traj.steps,
        loss=traj.loss,
        beta=traj.beta,
        mu=traj.mu,
        s=traj.s,
        c=traj.c,
        grid=traj.grid,
        f=traj.f,
        x=x,
        y=y,
    )
    return metrics


def cmd_init(args: argparse.Namespace) -> dict:
    widths = _ints(args.widths, "--widths")
    schemes = [_scheme(s) for s in args.schemes.split(",")]
    rows = {s: width_sweep(s, widths, args.draws, args.scale, args.seed) for s in schemes}
    result: dict = {"widths": widths, "draws": args.draws, "scale": args.scale, "rows": rows}
    for s, rs in rows.items():
        h = np.log([r["width"] for r in rs])
        result.setdefault("loglog_slope_sum_mu2", {})[s] = float(
            np.polyfit(h, np.log([r["measured"]["sum_mu2_in"] for r in rs]), 1)[0]
        )
        result.setdefault("loglog_slope_max_mu", {})[s] = float(
            np.polyfit(h, np.log([r["measured"]["max_abs_mu_in"] for r in rs]), 1)[0]
        )
        result.setdefault("breakpoint_ks_pvalue_H5000", {})[s] = breakpoint_ks(s, 5000, args.seed)
    from splinelens import plots

    plots.plot_init(rows, f"{args.out}/init.png")
    return result


def cmd_hessian(args: argparse.Namespace) -> dict:
    x, y = data_mod.load(args.data, args.seed)
    widths = _ints(args.widths, "--widths")
    scheme = _scheme(args.init)
    reports = []
    for h in widths:
        p0 = init_params(h, scheme, args.scale, np.random.default_rng(args.seed))
        p, loss, steps = fit_adaptive_lr(p0, x, y, args.steps, tol_loss=1e-14)
        rep = hessian_report(build_model(p), x, y, args.rel_tol)
        rep.update(
            width=h, loss=loss, steps=steps, max_abs_residual=float(np.max(np.abs(eval_params(p, x) - y)))
        )
        reports.append(rep)
    from splinelens import plots

    plots.plot_hessian(reports, f"{args.out}/hessian.png")
    return {"data": args.data, "n_data": int(x.size), "init": scheme, "reports": reports}


def cmd_regimes(args: argparse.Namespace) -> dict:
    x, y = data_mod.load(args.data, args.seed)
    widths = _ints(args.widths, "--widths")
    scales = _floats(args.scales, "--scales")
    rows = regime_sweep(x, y, widths, scales, _scheme(args.init), args.steps, args.seed, progress=True)
    from splinelens import plots

    plots.plot_regimes(rows, f"{args.out}/regimes.png")
    return {"data": args.data, "n_data": int(x.size), "init": args.init, "rows": rows}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="splinelens", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, out: str) -> None:
        p.add_argument("--out", default=out, help="output folder")
        p.add_argument("--seed", type=int, default=0)

    t = sub.add_parser("train", help="train one net, log it in spline coordinates, write plots and a video")
    t.add_argument(
        "--data", default="sine:12", help="NAME:N[:JITTER] (sine, cos, abs, quad, sinquad) or CSV x,y"
    )
    t.add_argument("--width", type=int, default=200)
    t.add_argument("--init", default="kaiming", help=f"one of {', '.join(SCHEMES)}")
    t.add_argument("--scale", type=float, default=1.0, help="multiplies every initial parameter")
    t.add_argument("--steps", type=int, default=20000)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument(
        "--method", choices=("gd", "flow"), default="gd", help="GD, or gradient flow (RK45) to t=steps·lr"
    )
    t.add_argument("--log-every", type=int, default=200)
    t.add_argument("--frames", type=int, default=40)
    t.add_argument("--no-video", action="store_true")
    common(t, "splinelens_train")
    t.set_defaults(func=cmd_train, json_name="metrics.json")

    i = sub.add_parser("init", help="breakpoint / delta-slope statistics and flatness vs width at init")
    i.add_argument("--widths", default="10,100,1000,10000")
    i.add_argument("--schemes", default=",".join(SCHEMES))
    i.add_argument("--draws", type=int, default=100)
    i.add_argument("--scale", type=float, default=1.0)
    common(i, "splinelens_init")
    i.set_defaults(func=cmd_init, json_name="init.json")

    h = sub.add_parser("hessian", help="Hessian spectra at trained minima for several widths")
    h.add_argument("--data", default="sine:8:0.3")
    h.add_argument("--widths", default="4,8,16,80")
    h.add_argument("--init", default="default")
    h.add_argument("--scale", type=float, default=1.0)
    h.add_argument("--steps", type=int, default=100_000)
    h.add_argument("--rel-tol", type=float, default=1e-6, help="|λ| ≤ rel_tol·max|λ| counts as zero")
    common(h, "splinelens_hessian")
    h.set_defaults(func=cmd_hessian, json_name="hessian.json")

    r = sub.add_parser("regimes", help="learned function vs linear / cubic interpolant across init scales")
    r.add_argument("--data", default="sine:5")
    r.add_argument("--widths", default="50,400")
    r.add_argument("--scales", default="0.03,0.1,0.3,1,3,10")
    r.add_argument("--init", default="default")
    r.add_argument("--steps", type=int, default=40_000)
    common(r, "splinelens_regimes")
    r.set_defaults(func=cmd_regimes, json_name="regimes.json")
    return ap


def check_out(out: str) -> None:
    """``--out`` must be a folder something can be written in: tried (a temporary file created and removed
    in the nearest existing folder on the way) before the work, not found out after it."""
    import tempfile

    path = os.path.abspath(out)
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(f"--out {out}: exists and is not a folder")
    base = path
    while not os.path.exists(base):
        base = os.path.dirname(base)
    if not os.path.isdir(base):
        raise InputError(f"--out {out}: {base} is a file, not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".splinelens-write-check-", dir=base)
    except OSError as err:
        raise InputError(f"--out {out}: cannot write in {base} ({err.strerror or err})") from None
    os.close(fd)
    os.unlink(name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)
    try:
        check_out(args.out)
        result = args.func(args)
    except InputError as exc:
        print(f"splinelens {args.command}: error: {exc}", file=sys.stderr)
        return 2
    path = os.path.join(args.out, args.json_name)
    write_json(path, result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
