"""Device and precision checks for a machine with a GPU (what CI, on the CPU, cannot run for real).

`check_devices()` trains and runs tiny random models (tests/tiny_models.py: BERT, GPT-2, T5) through
the command line and the task pool with the defaults a GPU user gets (`--device auto`, `--dtype auto`)
and with explicit settings, and checks that every model and every batch is on the GPU:

- train (auto: the GPU, bfloat16 where the GPU has it), bf16 and fp16 mixed precision, `cuda:0`;
- eval / predict / generate with no flags: the loaded model is on the GPU, in bfloat16, and a
  float32-trained task says so (`note:`); a bfloat16-trained task loaded in bfloat16 gives the
  tensors it saved, exactly;
- in-context tasks (calibrated; chain-of-thought, few-shot and zero-shot), zero-shot, LM-BFF
  demonstrations, generation tasks on causal and seq2seq models, through `eval`, `predict` and
  `generate` (an in-context `generate` prints reasoning and answer);
- the task pool on the GPU in bfloat16 with float32-trained tasks of every kind in one pass;
- the searches (triggers, labels, templates) and fit-lm-head with `--device cuda`.

    python benchmarks/gpu_devices.py [--device cuda] [--out benchmarks/results/gpu_devices.json]

Prints one line per check and a JSON summary (GPU name, torch and CUDA versions, seconds); exits 1 if
any check failed. `--device cpu` runs the same checks on the CPU (to try the script itself).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

SENTENCES = ["this movie was great fun", "a very bad film", "fun and good", "awful film , very boring",
             "good fun movie", "boring and bad", "a wonderful film", "bad and boring"]


def _cli(*argv) -> tuple[int, str, str]:
    """`prompttune ARGV` in this process: (exit status, stdout, stderr)."""
    from prompttune.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _config(path: Path, model: Path, data: Path, method: str, *, template: str = "{soft:2} {sentence} it was {mask} .",
            extra: str = "", train: str = "", generation: bool = False) -> Path:
    prompt = f'{{template: "{template}"}}' if generation else f'{{template: "{template}", verbalizer: {{0: [bad], 1: [good]}}}}'
    path.write_text(f"""
model: {model}
{extra}
task: {{train: {data}, eval: {data}, text_fields: [sentence]{", generation: true" if generation else ""}}}
prompt: {prompt}
method: {method}
train: {{epochs: 2, lr: 0.05, batch_size: 4, max_length: 40, progress: false, checkpoint: false{train}}}
""")
    return path


class _Loaded:
    """The classifiers the command line loads (a spy on `cli.load_task`)."""

    def __enter__(self):
        import prompttune.cli as cli

        self.seen, self._cli, self._load = [], cli, cli.load_task

        def spy(args):
            clf, config = self._load(args)
            self.seen.append(clf)
            return clf, config

        cli.load_task = spy
        return self.seen

    def __exit__(self, *exc):
        self._cli.load_task = self._load


def check_devices(device: str = "cuda", out: Path | None = None) -> dict:
    """Run every check on `device` (`cuda`, or `cpu` to try the script); return {"checks": [...], ...}."""
    import tiny_models
    from safetensors.torch import load_file

    from prompttune.artifacts import WEIGHTS, load_artifact, model_dtype, stored_state_dict
    from prompttune.devices import model_device, resolve_device, resolve_dtype
    from prompttune.serving.pool import TaskPool

    place = resolve_device(device)
    auto = resolve_dtype("auto", place)
    checks: list[dict] = []

    def check(name: str, fn) -> None:
        start = time.perf_counter()
        try:
            detail = fn()
            checks.append({"check": name, "ok": True, "seconds": round(time.perf_counter() - start, 2), "detail": detail})
            print(f"ok    {name} ({time.perf_counter() - start:.1f} s){f': {detail}' if detail else ''}", flush=True)
        except Exception as e:  # every failure is reported, the next check still runs
            checks.append({"check": name, "ok": False, "error": f"{type(e).__name__}: {e}",
                           "trace": traceback.format_exc(limit=-4)})
            print(f"FAIL  {name}: {type(e).__name__}: {e}", flush=True)

    def on_device(clf) -> str:
        where, dtype = model_device(clf), model_dtype(clf)
        assert where.type == place.type, f"the model is on {where}, expected {place}"
        return f"{where}, {str(dtype).removeprefix('torch.')}"

    def ok(code: int, err: str) -> None:
        assert code == 0, err.strip().splitlines()[-1] if err.strip() else f"exit {code}"

    with tempfile.TemporaryDirectory(prefix="prompttune-gpu-") as tmp:
        root = Path(tmp)
        models = {name: getattr(tiny_models, f"make_{name}")(root / name) for name in ("bert", "gpt2", "t5")}
        data = root / "data.tsv"
        data.write_text("label\tsentence\n" + "".join(f"{(i + 1) % 2}\t{s}\n" for i, s in enumerate(SENTENCES)))
        texts = [a for s in SENTENCES[:3] for a in ("--text", s)]
        flags = [] if device == "cuda" else ["--device", device]  # on a GPU: the defaults a user gets
        runs = root / "runs"

        def train(name, method, **kw):
            config = _config(root / f"{name}.yaml", kw.pop("model", models["bert"]), data, method, **kw)
            code, _, err = _cli("train", config, "--out", runs / name, *flags)
            ok(code, err)
            return json.loads((runs / name / "config.json").read_text())

        check("resolve auto", lambda: f"{place} {auto}")
        check("train prompt-tuning (auto dtype)", lambda: train("auto", "{name: prompt-tuning}")["dtype"])
        check("train float32 + bf16 mixed precision",
              lambda: train("bf16mp", "{name: prompt-tuning}", extra="model_dtype: float32",
                            train=", mixed_precision: bf16")["dtype"])
        if place.type == "cuda":
            check("train fp16 mixed precision", lambda: train("fp16mp", "{name: lora}", extra="model_dtype: float32",
                                                              train=", mixed_precision: fp16")["dtype"])

            def on_gpu_0():
                config = _config(root / "c0.yaml", models["bert"], data, "{name: prompt-tuning}")
                code, _, err = _cli("train", config, "--out", runs / "cuda0", "--device", "cuda:0")
                ok(code, err)
                return "cuda:0"

            check("train on cuda:0", on_gpu_0)
        check("train bfloat16 model: prompt-tuning + bitfit",
              lambda: train("bf16", "{name: [prompt-tuning, bitfit]}", extra="model_dtype: bfloat16")["dtype"])
        check("train float32 model", lambda: train("fp32", "{name: prompt-tuning}", extra="model_dtype: float32")["dtype"])

        def round_trip():
            clf, _ = load_artifact(runs / "bf16", device=place)
            saved, now = load_file(runs / "bf16" / WEIGHTS), stored_state_dict(clf)
            assert all(torch.equal(now[k].cpu(), v) and now[k].dtype == v.dtype for k, v in saved.items())
            trained = json.loads((runs / "bf16" / "eval.json").read_text())
            code, out, err = _cli("eval", runs / "bf16", "--data", data, "--json", "--dtype", "bfloat16", *flags)
            ok(code, err)
            assert json.loads(out)["loss"] == trained["loss"], (json.loads(out)["loss"], trained["loss"])
            return on_device(clf)

        check("bf16 artifact round-trips exactly", round_trip)

        def inference(artifact: str, *commands: str):
            def run():
                with _Loaded() as seen:
                    notes = []
                    for command in commands:
                        args = {"eval": ["--data", data, "--json"], "predict": [*texts, "--json"],
                                "generate": [texts[0], texts[1], "--json", "--max-new-tokens", "4"]}[command]
                        code, _, err = _cli(command, runs / artifact, *args, *flags)
                        ok(code, err)
                        notes += [line for line in err.splitlines() if line.startswith("note:")]
                    return "; ".join(on_device(c) for c in seen) + (f" ({notes[0]})" if notes else "")
            return run

        check("eval/predict float32 task (auto)", inference("fp32", "eval", "predict"))
        check("eval/predict bfloat16 task (auto)", inference("bf16", "eval", "predict"))
        train_kinds = {
            "zero-shot": ("{name: zero-shot}", {"template": "{sentence} it was {mask} ."}),
            "zero-shot-t5": ("{name: zero-shot}", {"template": "{sentence} it was {mask} .", "model": models["t5"]}),
            "demonstrations": ("{name: prompt-tuning, demonstrations: 1}", {}),
            "in-context": ("{name: in-context, context_examples: 2, calibrate: true}",
                           {"template": "{sentence} it was {mask} .", "model": models["gpt2"]}),
            "cot-zero-shot": ("{name: in-context, context_examples: 0, chain_of_thought: zero-shot, calibrate: true, "
                              "max_reasoning_tokens: 4}", {"template": "{sentence} it was {mask} .", "model": models["gpt2"]}),
            "gen-gpt2": ("{name: prefix-tuning, prompt_length: 2}",
                         {"template": "{sentence} : {mask}", "model": models["gpt2"], "generation": True}),
            "gen-t5": ("{name: prompt-tuning}", {"template": "{soft:2} {sentence} : {mask}", "model": models["t5"],
                                                 "generation": True}),
            "p-tuning-v2-gpt2": ("{name: p-tuning-v2, prompt_length: 2}", {"template": "{sentence} it was {mask} .",
                                                                         "model": models["gpt2"]}),
            "lora-gpt2": ("{name: lora}", {"template": "{sentence} it was {mask} .", "model": models["gpt2"]}),
            "adapter": ("{name: adapter}", {"template": "{sentence} it was {mask} ."}),
            "finetune": ("{name: finetune}", {"extra": "model_dtype: float32"}),
        }
        for name, (method, kw) in train_kinds.items():
            check(f"train {name}", lambda name=name, method=method, kw=kw: train(name, method, **dict(kw))["dtype"])
            commands = ("eval", "generate") if name.startswith(("gen", "in-context", "cot")) else ("eval", "predict")
            check(f"{'/'.join(commands)} {name}", inference(name, *commands))

        def pool():
            served = TaskPool(device=device, dtype="bfloat16" if place.type == "cuda" else "float32")
            for name in ("fp32", "bf16", "demonstrations", "zero-shot", "adapter", "finetune"):
                served.add(runs / name, name=name)
            items = [(name, {"sentence": s}) for name in ("fp32", "bf16", "demonstrations", "zero-shot", "adapter",
                                                           "finetune") for s in SENTENCES[:3]]
            scores = served.scores_mixed(items)
            assert len(scores) == len(items) and all(torch.isfinite(s).all() for s in scores)
            assert all(model_device(info.classifier).type == place.type for info in served.tasks())
            gpt2 = TaskPool(device=device, dtype="auto")
            for name in ("in-context", "gen-gpt2", "lora-gpt2", "p-tuning-v2-gpt2"):
                gpt2.add(runs / name, name=name.removesuffix("-gpt2"))
            mixed = [(name, {"sentence": s}) for name in ("in-context", "lora", "p-tuning-v2") for s in SENTENCES[:3]]
            assert len(gpt2.predict_mixed(mixed)) == len(mixed)
            assert len(gpt2.generate("gen", [{"sentence": "good fun"}], max_new_tokens=3)) == 1
            return f"{served.device}, {served.dtype}"

        check("task pool, mixed pass (bfloat16 on the GPU)", pool)

        def searches():
            plain = _config(root / "search.yaml", models["bert"], data, "{name: zero-shot}", template="{sentence} it was {mask} .")
            trig = _config(root / "trig.yaml", models["bert"], data, "{name: zero-shot}",
                           template="{sentence} {trigger:1} it was {mask} .")
            dev = ["--set", f"task.dev={data}"]
            for kind, config, extra in (("triggers", trig, ["--steps", "2", "--candidates", "2"]),
                                        ("labels", plain, ["--per-class", "2", "--assignments", "2"]),
                                        ("templates", plain, ["--generator", models["t5"], "--beams", "2", "--keep", "1"])):
                ok(*_cli("search", kind, config, "--out", runs / f"search-{kind}", *dev, *extra, *flags)[::2])
            ok(*_cli("fit-lm-head", "--model", models["bert"], "--data", data, "--held-out", "2", "--out", runs / "head",
                     *flags)[::2])
            return "triggers, labels, templates, fit-lm-head"

        check("searches and fit-lm-head", searches)

    failed = [c["check"] for c in checks if not c["ok"]]
    report = {"device": str(place), "gpu": torch.cuda.get_device_name(place) if place.type == "cuda" else None,
              "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
              "auto_dtype": str(auto), "passed": len(checks) - len(failed), "failed": failed, "checks": checks}
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "checks"}))
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), or cpu to try the script")
    ap.add_argument("--out", default=None, help="also write the report as JSON here")
    args = ap.parse_args()
    report = check_devices(args.device, Path(args.out) if args.out else None)
    sys.exit(1 if report["failed"] else 0)


if __name__ == "__main__":
    main()
