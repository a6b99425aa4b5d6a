"""The `prompttune` command line: train, eval, predict, generate, export, serve, demo, fit-lm-head, methods.

Every command turns its arguments into plain objects and calls the library; errors from bad
input print one line naming the problem and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import PromptTuneError

EPILOG_TRAIN = """example:
  prompttune train configs/sst2_prompt_finetune.yaml --out runs/sst2 --set train.lr=2e-5 --set task.shots=16
config keys: model, model_kind, lm_head, task.{train,dev,eval,eval_split,text_fields,label_field,shots,seed,labels},
  prompt.{template,verbalizer,word_score}, method.{name (one or a list),prompt_length,init,encoder,reparameterize,
  reparam_hidden,head,init_from,prompt_bank,transfer_epochs,lora_rank,lora_alpha,lora_dropout,target_modules,
  merge,adapter_kind,reduction_factor,demonstrations,demo_selection,demo_encoder,context_examples,instruction,
  calibrate,chain_of_thought,reasoning_field,cot_trigger,answer_trigger,max_reasoning_tokens},
  train.{epochs,lr,batch_size,eval_batch_size,max_length,weight_decay,warmup_ratio,max_grad_norm,seed,progress,
  checkpoint}
paths: relative paths in the config file are the file's folder's; those given with --set, the current directory's.
  task.eval_split: 0.2 holds out 20% of task.train (per label, seeded) as the evaluation set."""


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
    try:
        return args.func(args) or 0
    except PromptTuneError as e:
        # One line, even where a message quotes a library's text that has line breaks.
        print(f"prompttune {args.command}: error: {one_line(str(e))}", file=sys.stderr)
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


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="prompttune",
        description="Prompt learning and parameter-efficient tuning: one frozen model, many small tasks.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a saved task on a labelled data file",
                       description="Evaluate a task artifact: accuracy, macro-F1 and the number of examples.")
    p.add_argument("artifact", help="task artifact directory")
    p.add_argument("--data", required=True, help="labelled .tsv/.csv/.json/.jsonl file or saved dataset directory")
    p.add_argument("--label-field", default=None, help="label column (default: the one used in training, else 'label')")
    p.add_argument("--batch-size", type=whole_number(1), default=32, help="examples per forward pass (default 32)")
    p.add_argument("--json", action="store_true", help='print {"accuracy": ..., "macro_f1": ..., "n": ...}')
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="predict labels for texts with a saved task",
                       description="Predict the label of each --text. For a task with several text fields, "
                                   'give each --text as a JSON object, e.g. \'{"premise": "...", "hypothesis": "..."}\'; '
                                   "on a one-field task a --text is the text itself, or a JSON object with that field.")
    p.add_argument("artifact", help="task artifact directory")
    p.add_argument("--text", action="append", required=True, help="an input (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object per input with label and probabilities")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("generate", help="generate text from a saved task's prompt (causal or seq2seq models)",
                       description="Render each --text with the task's template up to {mask} (the whole input with the "
                                   "mask as a sentinel on T5), bind the task's soft tokens / prefixes, and print what the "
                                   "model generates. Inputs are batched with padding; the cache is used. For an "
                                   "in-context task, print its chain-of-thought reasoning (if any) and its answer.")
    p.add_argument("artifact", help="task artifact directory")
    p.add_argument("--text", action="append", required=True, help="an input (repeatable; JSON object for several fields)")
    p.add_argument("--max-new-tokens", type=whole_number(1), default=20, help="tokens to generate at most (default 20)")
    p.add_argument("--json", action="store_true", help="print one JSON object per input")
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
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda or cuda:N (default auto)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights' dtype (default auto: bfloat16 on a GPU that has it, else float32)")
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
    p.set_defaults(func=cmd_fit_lm_head)

    p = sub.add_parser("demo", help="few-shot sentiment on the embedded default model, end to end (< 3 minutes)",
                       description="Fit an MLM head on the embedded all-MiniLM-L6-v2, then compare zero-shot and 16-shot "
                                   "prompt-based fine-tuning on SST-2 sentences; print accuracy.")
    p.add_argument("--data", default=None, help="SST-2 style .tsv (label<TAB>sentence); default: ../shared/data/sst2/train.tsv if present, else a small built-in set")
    p.add_argument("--out", default="runs/demo", help="where the demo writes its head and task artifact")
    p.add_argument("--overwrite", action="store_true", help="replace the task artifacts of an earlier demo already in --out")
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
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("methods", help="list the available methods")
    p.set_defaults(func=cmd_methods)
    return parser


def cmd_train(args) -> int:
    from .config import load_config
    from .recipes import run_training

    cfg = load_config(args.config, args.overrides)
    try:
        summary = run_training(cfg, args.out, resume=args.resume, overwrite=args.overwrite)
    except KeyboardInterrupt:
        if (Path(args.out) / "checkpoint" / "state.json").is_file():
            print(f"interrupted; the last finished epoch is kept in {Path(args.out) / 'checkpoint'}: continue with "
                  f"prompttune train {args.config} --out {args.out} --resume", file=sys.stderr)
            return 130
        raise
    print(json.dumps({"artifact": str(args.out), **{k: summary[k] for k in ("method", "trainable_parameters", "best_dev")},
                      **({"eval": summary["eval"]} if "eval" in summary else {})}))
    return 0


def cmd_eval(args) -> int:
    from .artifacts import load_artifact
    from .data import load_examples
    from .evaluation import evaluate

    clf, config = load_artifact(args.artifact)
    label_field = args.label_field or config.get("label_field", "label")
    labels = None if config.get("generation") else config["labels"]
    examples = load_examples(args.data, config["text_fields"], label_field, labels=labels)
    result = evaluate(clf, examples, batch_size=args.batch_size, progress=not args.json)
    if args.json:
        print(json.dumps(result))
    elif "accuracy" in result:
        print(f"accuracy {result['accuracy']:.4f}  macro-F1 {result['macro_f1']:.4f}  n {result['n']}")
    else:  # a generation task
        print(f"loss {result['loss']:.4f}  perplexity {result['perplexity']:.2f}  n {result['n']}")
    return 0


def cmd_predict(args) -> int:
    from .artifacts import load_artifact
    from .data import examples_from_texts
    from .evaluation import predict_scores

    clf, config = load_artifact(args.artifact)
    if config.get("generation"):
        from .errors import ConfigError

        raise ConfigError("this is a generation task: use `prompttune generate` to see its output text")
    probs = predict_scores(clf, examples_from_texts(args.text, config["text_fields"], name="--text")).softmax(-1)
    for text, p in zip(args.text, probs):
        label = config["labels"][int(p.argmax())]
        if args.json:
            print(json.dumps({"text": text, "label": label, "probabilities": dict(zip(config["labels"], p.tolist()))},
                             ensure_ascii=False))
        else:
            print(f"{label}\t{float(p.max()):.3f}\t{text}")
    return 0


def cmd_generate(args) -> int:
    from .artifacts import load_artifact
    from .data import examples_from_texts
    from .generation import generate

    clf, config = load_artifact(args.artifact)
    examples = examples_from_texts(args.text, config["text_fields"], name="--text")
    if hasattr(clf, "explain"):  # an in-context task: its reasoning (chain of thought) and answer
        for text, out in zip(args.text, clf.explain(examples)):
            if args.json:
                print(json.dumps({"text": text, **out}, ensure_ascii=False))
            else:
                print((f"{out['reasoning']}\n" if out["reasoning"] is not None else "") + f"=> {out['label']}")
        return 0
    outputs = generate(clf, examples, max_new_tokens=args.max_new_tokens)
    for text, out in zip(args.text, outputs):
        print(json.dumps({"text": text, "generated": out}, ensure_ascii=False) if args.json else out)
    return 0


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
          allow_dirs=args.allow_dirs, log_level=args.log_level)
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
                                  seed=args.seed, overwrite=args.overwrite)
    print(json.dumps(report))
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(data=args.data, out=Path(args.out), overwrite=args.overwrite)
    return 0


def cmd_search(args) -> int:
    from .search.run import run_search

    settings = {k: v for k, v in vars(args).items()
                if k not in ("command", "search", "config", "out", "overrides", "overwrite", "func")}
    report = run_search(args.search, args.config, args.out, overrides=args.overrides, overwrite=args.overwrite, **settings)
    print(json.dumps({"out": str(args.out), "found": report["found"], **({"dev_accuracy": report["dev_accuracy"]}
                                                                          if "dev_accuracy" in report else {})},
                     ensure_ascii=False))
    return 0


def cmd_methods(args) -> int:
    from .methods import get_method, method_names

    for name in method_names():
        print(f"{name:18s} {get_method(name).summary}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
