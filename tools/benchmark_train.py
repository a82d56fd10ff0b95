"""Images/s of the trainer's DELG step against a plain classification step of the same backbone.

    python tools/benchmark_train.py  # CPU: ResNet-50, stride 16, 1000 classes, batch 8, 224 px
    python tools/benchmark_train.py --device cuda --size 512 --batch 32 --amp bf16 --channels-last

The DELG step is core.step.train_step itself (one forward, one backward of the whole loss,
gradient clipping, the per-iteration statistics all-reduce, SGD step). The plain step is the same
backbone, global average pooling and a linear layer to the same classes, cross-entropy, the same
clipping and SGD. Both run on the same random batch; timed steps alternate between the two so that a
change of machine load hits both alike. The last line is ``ratio: <median DELG step time / median
plain step time>``.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # repository root

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from core.config import cfg, load_global_cfg  # noqa: E402
from core.distributed import PreemptionFlag  # noqa: E402
from core.hardware import describe_machine  # noqa: E402
from core.optimizer import build_optimizer  # noqa: E402
from core.run import DELG_TASK, Learner, Placement, amp_dtype_of  # noqa: E402
from core.step import train_step  # noqa: E402
from modeling import build_backbone, build_loss, build_model  # noqa: E402


class PlainClassifier(nn.Module):
    """Backbone to its global map, global average pooling, linear classifier."""

    def __init__(self, backbone, num_classes):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.output_shape()["global"].channels, num_classes)

    def forward(self, images):
        global_map = self.backbone.global_map(self.backbone.forward_shared(images))
        return self.fc(global_map.mean(dim=(2, 3)))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--stride", type=int, default=16, help="MODEL.LOCAL_STRIDE")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument(
        "--steps", type=int, default=5, help="timed steps of each kind (median taken; at least 3)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each kind first")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"], help="GPU only")
    parser.add_argument("--channels-last", action="store_true", help="GPU only")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile one step of each: where DELG's extra goes",
    )
    args = parser.parse_args()
    if args.steps < 3:
        parser.error("--steps must be at least 3")
    return args


def make_config(args):
    values = {
        "MODEL.DEPTH": args.depth,
        "RESNET.TRANS_FUN": "bottleneck_transform" if args.depth >= 50 else "basic_transform",
        "MODEL.LOCAL_STRIDE": args.stride,
        "MODEL.NUM_CLASSES": args.classes,
        "TRAIN.BATCH_SIZE": args.batch,
        "TRAIN.IM_SIZE": args.size,
        "TRAIN.AMP": args.amp,
        "TRAIN.CHANNELS_LAST": args.channels_last,
        "DEVICE": args.device,
    }
    return load_global_cfg(opts=[str(item) for pair in values.items() for item in pair])


def delg_step_runner(placement):
    """A closure running core.step.train_step on a Learner (core/run.py) of the configured DELG."""
    model = build_model(cfg).to(placement.device)
    if placement.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer, loss_fn = build_optimizer(model, cfg), build_loss(cfg)
    scaler = torch.amp.GradScaler(placement.device.type, enabled=fp16(placement))
    learner = Learner(model, model, loss_fn, optimizer, scaler, DELG_TASK, placement,
                      PreemptionFlag())  # fmt: skip
    model.train()
    clip = cfg.OPTIM.CLIP_GRAD_NORM
    return lambda images, labels: train_step(learner, images, labels, 0, clip)


def plain_step_runner(placement):
    model = PlainClassifier(build_backbone(cfg), cfg.MODEL.NUM_CLASSES).to(placement.device)
    if placement.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(placement.device.type, enabled=fp16(placement))
    model.train()

    def step(images, labels):
        images = placement.move(images)
        labels = labels.to(placement.device, non_blocking=True)
        with placement.autocast():
            loss = nn.functional.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), cfg.OPTIM.CLIP_GRAD_NORM)
        scaler.step(optimizer)
        scaler.update()
        return loss.item()

    return step


def fp16(placement):
    return placement.amp_dtype == torch.float16


def timed(step, images, labels, device):
    """(wall seconds, CPU seconds of this process) of one step."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    step(images, labels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, time.process_time() - start_cpu


def profile_difference(steps, images, labels, top=8):
    """Print the ops whose self time (torch.profiler, one step of each) DELG adds most to the plain
    step."""
    from torch.profiler import ProfilerActivity, profile

    totals = {}
    for name, step in steps.items():
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            step(images, labels)
        totals[name] = {op.key: op.self_cpu_time_total / 1e6 for op in profiler.key_averages()}
    delg, plain = totals["delg"], totals["plain"]
    print(f"profile: DELG {sum(delg.values()):.3f} s, plain {sum(plain.values()):.3f} s of op time")
    extra = sorted(set(delg) | set(plain), key=lambda op: plain.get(op, 0) - delg.get(op, 0))
    for op in extra[:top]:
        print(
            f"  {op}: +{delg.get(op, 0) - plain.get(op, 0):.3f} s ({delg.get(op, 0):.3f} vs "
            f"{plain.get(op, 0):.3f})"
        )


def main():
    args = parse_args()
    make_config(args)
    placement = make_placement(args)
    torch.backends.cudnn.benchmark = True
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size)
    labels = torch.randint(0, args.classes, (args.batch,))
    steps = {"delg": delg_step_runner(placement), "plain": plain_step_runner(placement)}
    times, cpu_times = measure(steps, images, labels, args, placement.device)
    on_gpu = placement.device.type == "cuda"
    print(
        f"ResNet-{args.depth}, stride {args.stride}, {args.classes} classes, batch {args.batch}, "
        f"{args.size} px, {placement.device}, amp {args.amp if on_gpu else 'off'}, "
        f"channels-last {placement.channels_last}, {torch.get_num_threads()} threads, "
        f"{args.steps} timed steps each"
    )
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        listed = " ".join(f"{v:.3f}" for v in values)
        print(
            f"{name:>5}: median {medians[name]:.3f} s/step, {args.batch / medians[name]:.1f} "
            f"images/s ({listed})"
        )
    # Other jobs on the machine only ever add time: the fastest steps and (on CPU) the CPU time of
    # this process show the ratio a quiet machine would give.
    print(f"ratio of the fastest steps: {min(times['delg']) / min(times['plain']):.3f}")
    if not on_gpu:
        cpu_ratio = statistics.median(cpu_times["delg"]) / statistics.median(cpu_times["plain"])
        print(f"ratio of median CPU times of this process: {cpu_ratio:.3f}")
    if args.profile:
        profile_difference(steps, images, labels)
    print(describe_machine(placement.device))
    print(f"ratio: {medians['delg'] / medians['plain']:.3f}")


def make_placement(args):
    """--device, and on a GPU --amp and --channels-last (GPU options)."""
    device = torch.device(args.device)
    if device.type != "cuda":
        if args.amp != "off" or args.channels_last:
            print("--amp and --channels-last are GPU options; ignored on CPU")
        return Placement(device)
    return Placement(device, amp_dtype_of(args.amp), args.channels_last)


def measure(steps, images, labels, args, device):
    """({name: wall seconds per timed step}, {name: CPU seconds}) after args.warmup untimed steps
    of each; timed steps alternate between the kinds."""
    for step in steps.values():
        for _ in range(args.warmup):
            timed(step, images, labels, device)
    times = {name: [] for name in steps}
    cpu_times = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            wall, cpu = timed(step, images, labels, device)
            times[name].append(wall)
            cpu_times[name].append(cpu)
    return times, cpu_times


if __name__ == "__main__":
    main()
