"""Where does a watched step's time go? A per-component breakdown of gradwatch's own work.

Run:  .venv/bin/python benchmarks/profile_step.py                 (default mode, transformer)
      .venv/bin/python benchmarks/profile_step.py --steps 100 --options locate_nonfinite=True
      python benchmarks/profile_step.py --device cuda --batch-scale 8 --workload cnn
                                         (on a GPU: the components are host time, what
                                         the training thread spends launching work)
      .venv/bin/py-spy record -o prof.txt -f raw --threads -- \\
          .venv/bin/python benchmarks/profile_step.py --no-components
                                         (whole stacks, every thread; see --help)

It trains the benchmark's transformer (``bench_overhead.workloads()``) under
``gradwatch.watch`` and reports, per step:

- **components**: the time spent inside each of gradwatch's main functions on the
  training thread (measuring, the update-ratio seal, the host side with its detectors
  and TensorBoard packing, the sampled probes), inclusive of what they call, as ms per
  step averaged over all steps and as ms on the sampled steps alone. Functions that do
  not exist in this checkout are skipped (named in the output), so the script survives
  refactors of ``gradwatch``;
- **sampled-step spike**: the median wall time of sampled steps (step % 10 == 0) and of
  the others, watched and unwatched, in alternating blocks;
- **threads**: CPU time per thread (``/proc/self/task``), so the TensorBoard writer
  thread's share of the cores shows.

Nothing here is asserted: it is a measuring tool for people. On a loaded machine the
absolute numbers move; the shares are what to read.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_overhead import Workload, device_option, synchronize, workloads

import gradwatch

#: (label, "module:Class.method") — inclusive timers; nested ones are also counted in
#: their callers (the indentation of the label says which).
COMPONENTS: list[tuple[str, str]] = [
    ("record_loss", "gradwatch._watcher:Watcher.record_loss"),
    ("before step: measure + policies", "gradwatch._watcher:Watcher._before_optimizer_step"),
    ("  norms + step vector (StepMeter.measure)", "gradwatch._measure.meter:StepMeter.measure"),
    (
        "  update-ratio snapshot (StepMeter.before_update)",
        "gradwatch._measure.meter:StepMeter.before_update",
    ),
    (
        "  activation statistics, batched (ActivationProbe.collect)",
        "gradwatch._measure.activations:ActivationProbe.collect",
    ),
    ("after step: seal + drain + host side", "gradwatch._watcher:Watcher._after_optimizer_step"),
    (
        "  seal: update ratio + host copy (StepMeter.seal)",
        "gradwatch._measure.meter:StepMeter.seal",
    ),
    ("  read_record (host vector -> StepRecord)", "gradwatch._measure.meter:read_record"),
    ("  host side (Watcher._consume)", "gradwatch._watcher:Watcher._consume"),
    ("    detectors (Watcher._run_detectors)", "gradwatch._watcher:Watcher._run_detectors"),
    (
        "    TensorBoard packing (TensorBoardSink.write_step)",
        "gradwatch._sinks.tensorboard:TensorBoardSink.write_step",
    ),
    (
        "    heat map (TensorBoardSink.write_flow_image)",
        "gradwatch._sinks.tensorboard:TensorBoardSink.write_flow_image",
    ),
    ("  arm probes (Watcher._arm_activations)", "gradwatch._watcher:Watcher._arm_activations"),
    ("forward hooks (SafeHook.__call__, all probes)", "gradwatch._measure.hooks:SafeHook.__call__"),
    (
        "  activation statistics (ActivationProbe._observe)",
        "gradwatch._measure.activations:ActivationProbe._observe",
    ),
    ("  output logits (LogitProbe._observe)", "gradwatch._measure.logits:LogitProbe._observe"),
    (
        "  recurrent (RecurrentProbe.__call__)",
        "gradwatch._measure.recurrent:RecurrentProbe.__call__",
    ),
    (
        "  attention of nn.MultiheadAttention (AttentionProbe._enter_mha)",
        "gradwatch._measure.attention:AttentionProbe._enter_mha",
    ),
    (
        "attention statistics (AttentionProbe._observe)",
        "gradwatch._measure.attention:AttentionProbe._observe",
    ),
    (
        "attention mode dispatch incl. the model's own ops (_AttentionMode.__torch_function__)",
        "gradwatch._measure.attention:_AttentionMode.__torch_function__",
    ),
    (
        "the model's own attention modules (nn.MultiheadAttention.forward)",
        "torch.nn.modules.activation:MultiheadAttention.forward",
    ),
    ("NaN localisation: forward checks", "gradwatch._measure.localize:NonfiniteLocator._forward"),
    ("NaN localisation: gradient checks", "gradwatch._measure.localize:NonfiniteLocator._grad"),
    ("NaN localisation: take", "gradwatch._measure.localize:NonfiniteLocator.take"),
]


def _resolve(spec: str) -> tuple[Any, str] | None:
    module_name, _, qualname = spec.partition(":")
    try:
        owner: Any = __import__(module_name, fromlist=["_"])
        *path, name = qualname.split(".")
        for part in path:
            owner = getattr(owner, part)
        if name not in vars(owner):
            return None
        return owner, name
    except (ImportError, AttributeError):
        return None


@contextlib.contextmanager
def component_clocks(
    components: list[tuple[str, str]], main: int, clock: Callable[[], float] = time.perf_counter
) -> Iterator[tuple[dict[str, float], list[str]]]:
    """Wrap each component (on the thread ``main`` only) with a timer summing seconds into
    ``totals[label]`` (inclusive) and ``totals["self: " + label]`` (exclusive of the other
    timed components it called); yields (totals, labels of components not found)."""
    totals: dict[str, float] = {}
    stack: list[float] = []  # time of timed callees, per open timed frame
    missing: list[str] = []
    saved: list[tuple[Any, str, Any]] = []
    for label, spec in components:
        found = _resolve(spec)
        if found is None:
            missing.append(f"{label.strip()} ({spec})")
            continue
        owner, name = found
        original = vars(owner)[name]
        is_static = isinstance(original, staticmethod)
        function = original.__func__ if is_static else original
        totals[label] = totals[f"self: {label}"] = 0.0

        def timed(
            *args: Any, __f: Callable[..., Any] = function, __l: str = label, **kwargs: Any
        ) -> Any:
            if threading.get_ident() != main:
                return __f(*args, **kwargs)
            stack.append(0.0)
            start = clock()
            try:
                return __f(*args, **kwargs)
            finally:
                spent = clock() - start
                totals[__l] += spent
                totals[f"self: {__l}"] += spent - stack.pop()
                if stack:
                    stack[-1] += spent

        setattr(owner, name, staticmethod(timed) if is_static else timed)
        saved.append((owner, name, original))
    try:
        yield totals, missing
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) of every thread of this process, by thread name."""
    tick = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(tid), f"native thread {tid}")
        if int(tid) == os.getpid():
            name = "main (training) thread"
        seconds = (int(fields[11]) + int(fields[12])) / tick
        out[name] = out.get(name, 0.0) + seconds
    return out


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}


def _step(
    workload: Workload,
    model: Any,
    optimizer: Any,
    watcher: Any,
    i: int,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    x, y = workload.batches[i % len(workload.batches)]
    t0 = clock()
    loss = workload.loss_fn(model(x), y)
    loss.backward()
    if watcher is not None:
        watcher.record_loss(loss)
    optimizer.step()
    optimizer.zero_grad()
    # The step's device work is part of its wall time (the components are host time).
    synchronize(next(model.parameters()).device)
    return clock() - t0


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``name=value`` pairs (values as Python literals) into ``watch()`` options."""
    options: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--options: expected name=value, got {pair!r}")
        try:
            options[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[name] = value
    return options


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", default="transformer", help="transformer, cnn or mlp")
    parser.add_argument("--steps", type=int, default=60, help="watched steps (x10 ideally)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (or cuda:N)")
    parser.add_argument(
        "--batch-scale", type=int, default=1, help="batches this many times larger (GPUs)"
    )
    parser.add_argument("--options", nargs="*", default=[], help="watch() options, name=value")
    parser.add_argument("--every", type=int, default=10, help="sampling period to split on")
    parser.add_argument(
        "--no-components", action="store_true", help="no timers (for an outside profiler)"
    )
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall time, or the training thread's CPU time: steady on a busy machine, "
        "complete with --threads 1 (with more, ops' work on other threads is left out)",
    )
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the unwatched steps after the run"
    )
    args = parser.parse_args(argv)
    if args.batch_scale < 1:
        parser.error(f"--batch-scale: expected an integer >= 1, got {args.batch_scale}")
    torch.set_num_threads(args.threads)
    options = parse_options(args.options)
    device = device_option(parser, args.device)
    workload = next(
        w for w in workloads(device, batch_scale=args.batch_scale) if w.name == args.workload
    )
    torch.manual_seed(0)
    model = workload.make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    print(
        f"{workload.name} on {device}, torch {torch.__version__} on {args.threads} threads, "
        f"{args.clock} clock, options {options or 'default'}, {args.steps} steps, load average "
        f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}",
        flush=True,
    )
    for i in range(3):  # warm-up, unwatched
        _step(workload, model, optimizer, None, i)

    watched: dict[bool, list[float]] = {True: [], False: []}
    unwatched: dict[bool, list[float]] = {True: [], False: []}
    main_thread = threading.get_ident()
    clock = CLOCKS[args.clock]
    clocks = (
        contextlib.nullcontext(({}, []))
        if args.no_components
        else component_clocks(COMPONENTS, main_thread, CLOCKS[args.clock])
    )
    cpu_before = thread_cpu_seconds()
    with tempfile.TemporaryDirectory() as logdir, clocks as (totals, missing):
        watcher = gradwatch.watch(model, optimizer, logdir=logdir, **options)
        _step(workload, model, optimizer, watcher, 0)  # step 0: caches, left out
        for key in totals:
            totals[key] = 0.0
        sampled_totals = dict.fromkeys(totals, 0.0)
        n_sampled = 0
        for i in range(1, args.steps + 1):
            sampled = i % args.every == 0
            before = dict(totals)
            watched[sampled].append(_step(workload, model, optimizer, watcher, i, clock))
            if sampled:
                n_sampled += 1
                for key in totals:
                    sampled_totals[key] += totals[key] - before[key]
        cpu_after = thread_cpu_seconds()  # before close(): the writer thread ends there
        totals = dict(totals)  # close() draws a last picture and judges trends: not a step
        watcher.close()
        # The same number of unwatched steps right after, for the spike's baseline.
        for i in range(1, 0 if args.no_baseline else args.steps + 1):
            unwatched[i % args.every == 0].append(_step(workload, model, optimizer, None, i, clock))

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1e3:.1f} ms" if values else "-"

    print(f"\nstep {args.clock} time (median) | sampled steps | other steps")
    print(f"watched                  | {ms(watched[True]):>13} | {ms(watched[False]):>11}")
    print(f"unwatched (right after)  | {ms(unwatched[True]):>13} | {ms(unwatched[False]):>11}")
    if totals:
        steps = args.steps
        print(
            f"\n| component (indented = called by the one above) | ms/step, all {steps} "
            f"steps: inclusive | self | ms per sampled step ({n_sampled}): inclusive | self "
            f"| ms per other step ({steps - n_sampled}): inclusive | self |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        per_sampled, per_other = max(n_sampled, 1), max(steps - n_sampled, 1)
        for label, _ in COMPONENTS:
            if label in totals:
                own = f"self: {label}"
                cells = [
                    totals[label] / steps,
                    totals[own] / steps,
                    sampled_totals[label] / per_sampled,
                    sampled_totals[own] / per_sampled,
                    (totals[label] - sampled_totals[label]) / per_other,
                    (totals[own] - sampled_totals[own]) / per_other,
                ]
                print(f"| {label} | " + " | ".join(f"{c * 1e3:.2f}" for c in cells) + " |")
        if missing:
            print("not in this checkout: " + "; ".join(missing))
    print("\n| thread | CPU seconds while watched | per step |")
    print("|---|---:|---:|")
    for name in sorted(cpu_after, key=lambda n: -(cpu_after[n] - cpu_before.get(n, 0.0))):
        spent = cpu_after[name] - cpu_before.get(name, 0.0)
        if spent > 0:
            print(f"| {name} | {spent:.2f} | {spent / args.steps * 1e3:.1f} ms |")
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
