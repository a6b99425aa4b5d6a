"""Runs you can read and compare: the training plot, `eval`'s table and `compare`'s table.

Everything here reads what training and evaluation recorded (an artifact's `config.json`, its
`eval.json`, an evaluation's dict) and writes it for people: a PNG, or aligned text.
"""

from __future__ import annotations

import json
from pathlib import Path

from .artifacts import CONFIG, EVAL, WEIGHTS, read_config
from .errors import ArtifactError
from .files import Writer, read_json_object
from .methods import method_list


def training_plot_writer(history: list[dict], best_epoch: int | None = None) -> Writer:
    """A writer of a PNG of a run's `history` (`TrainResult.history`): the training loss per epoch
    (and the dev loss, where there is one) beside the dev accuracy per epoch, the best epoch marked.

    Drawn with matplotlib's Agg canvas (no screen, no pyplot state), for `files.write_together`.

    Example:
        >>> write_together("runs/x", {"training.png": training_plot_writer(result.history, result.best_epoch)})
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    accuracy = [h["dev_accuracy"] for h in history if "dev_accuracy" in h]
    figure = Figure(figsize=(9 if accuracy else 5, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    panels = figure.subplots(1, 2 if accuracy else 1, squeeze=False)[0]
    loss = panels[0]
    loss.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train loss")
    if any("dev_loss" in h for h in history):
        loss.plot(epochs, [h.get("dev_loss") for h in history], marker="o", label="dev loss")
    loss.set(xlabel="epoch", ylabel="loss", title="loss per epoch")
    if accuracy:
        panels[1].plot(epochs, accuracy, marker="o", color="tab:green", label="dev accuracy")
        panels[1].set(xlabel="epoch", ylabel="accuracy", title="dev accuracy per epoch")
    for panel in panels:
        if best_epoch is not None:
            panel.axvline(best_epoch, color="gray", linestyle="--", linewidth=1, label=f"best epoch ({best_epoch})")
        panel.xaxis.get_major_locator().set_params(integer=True)
        panel.legend(fontsize="small")
    # No "Software" stamp: equal runs give equal files.
    return lambda path: figure.savefig(path, format="png", metadata={"Software": None})


def eval_table(result: dict) -> str:
    """`prompttune eval`'s text for people: the headline numbers, the majority baseline, each
    class's precision / recall / F1 / support and the confusion matrix (a text task: loss and
    perplexity, and where text was generated its scores, settings and samples: `generation_lines`)."""
    if "accuracy" not in result:
        loss = f"loss {result['loss']:.4f}  perplexity {result['perplexity']:.2f}  n {result['n']}"
        return "\n".join(generation_lines(result, loss) if "bleu" in result else [loss])
    lines = [f"accuracy {result['accuracy']:.4f}  macro-F1 {result['macro_f1']:.4f}  n {result['n']}"]
    if "majority" in result:
        m = result["majority"]
        whose = "the training labels" if m["from"] == "train" else "this data (the training labels are not recorded)"
        why = f"the classes of {whose} are equal: the first label" if m.get("tie") else f"the majority of {whose}"
        lines.append(f"majority baseline: always {m['label']!r} ({why}): "
                     f"accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}")
    if "per_class" in result:
        rows = [[label, f"{c['precision']:.4f}", f"{c['recall']:.4f}", f"{c['f1']:.4f}", str(c["support"])]
                for label, c in result["per_class"].items()]
        lines += ["", *aligned(["label", "precision", "recall", "F1", "support"], rows)]
    if "confusion_matrix" in result:
        labels = result["labels"]
        rows = [[label, *map(str, counts)] for label, counts in zip(labels, result["confusion_matrix"])]
        lines += ["", "confusion matrix (rows: true label, columns: predicted)",
                  *aligned(["true \\ predicted", *labels], rows)]
    return "\n".join(lines)


def generation_lines(result: dict, loss: str) -> list[str]:
    """The lines of a text generator's evaluation (`evaluation.generated_text_scores`): its scores
    beside the `loss` line, the BLEU signature, the decoding settings, then the samples, one JSON
    value per line (a text's line breaks shown as \\n).

    Example:
        >>> print("\\n".join(generation_lines(result, "loss 1.2040  perplexity 3.33  n 12")))
        BLEU 41.20  chrF 60.11  ROUGE-L 55.02  exact match 25.00  (4 inputs, 12 references)
        loss 1.2040  perplexity 3.33  n 12
        ...
    """
    d = result["decoding"]
    how = "greedy" if d["num_beams"] == 1 else f"beam search, {d['num_beams']} beams"
    stop = f", cut at {json.dumps(d['stop'], ensure_ascii=False)}" if d["stop"] else ""
    lines = [f"BLEU {result['bleu']:.2f}  chrF {result['chrf']:.2f}  ROUGE-L {result['rouge_l']:.2f}  "
             f"exact match {result['exact_match']:.2f}  ({result['inputs']} inputs, {result['references']} references)",
             loss, f"BLEU signature {result['bleu_signature']}",
             f"decoding: {how}, at most {d['max_new_tokens']} new tokens{stop}"]
    if result["samples"]:
        lines += ["", f"samples (the first {len(result['samples'])} inputs)"]
    for sample in result["samples"]:
        lines += [f"  input       {json.dumps(sample['input'], ensure_ascii=False)}",
                  f"  generated   {json.dumps(sample['generated'], ensure_ascii=False)}",
                  *(f"  reference   {json.dumps(ref, ensure_ascii=False)}" for ref in sample["references"]), ""]
    return lines[:-1] if result["samples"] else lines


def run_summary(directory: str | Path) -> dict:
    """What `prompttune compare` shows of one task artifact, from what `train` recorded: method,
    trained parameters, stored numbers, the artifact's size (config.json + weights.safetensors),
    best epoch, epochs run and whether early stopping ended the run, the best dev numbers, the
    eval numbers (its `eval.json`, if any) and the training time.

    Raises `ArtifactError` naming `directory` if it is not a task artifact.

    Example:
        >>> run_summary("runs/sst2")["eval"]["accuracy"]
        0.84
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"{str(directory)!r} is not a task artifact: " +
                            ("it is a file" if directory.exists() else "it does not exist"))
    config = read_config(directory)
    training = config.get("training") if isinstance(config.get("training"), dict) else {}
    evaluation = read_json_object(directory / EVAL, ArtifactError) if (directory / EVAL).is_file() else None
    method = config["method"]
    size = sum((directory / name).stat().st_size for name in (CONFIG, WEIGHTS) if (directory / name).is_file())
    history = training.get("history") or []
    return {
        "run": str(directory),
        "method": "+".join(method_list(method)),
        "trainable_parameters": _number(training.get("trainable_parameters", config.get("trainable_parameters"))),
        "stored_numbers": _number(config.get("stored_numbers")),
        "size_bytes": size,
        "size": human_bytes(size),
        "best_epoch": _number(training.get("best_epoch")),
        "epochs": len(history) if isinstance(history, list) and history else None,
        "stopped_early": training.get("stopped_early") is True,
        "dev": headline(training.get("best_dev")),
        "eval": headline(evaluation),
        "seconds": _number(training.get("seconds")),
    }


def _number(value) -> int | float | None:
    """`value` if it is a number (what prompttune records), else None (not recorded, or edited by hand)."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def headline(result: dict | None) -> dict | None:
    """The summary numbers of an evaluation (accuracy, macro-F1; BLEU, chrF, ROUGE-L, exact match of
    generated text; loss, perplexity, n: those it has)."""
    if not isinstance(result, dict):
        return None
    return {k: result[k] for k in ("accuracy", "macro_f1", "bleu", "chrf", "rouge_l", "exact_match", "loss", "perplexity", "n")
            if _number(result.get(k)) is not None}


COMPARE_COLUMNS = ["run", "method", "trained", "stored", "size", "best epoch", "dev", "eval", "eval F1", "time"]


def compare_table(summaries: list[dict]) -> str:
    """`prompttune compare`'s table: one row per `run_summary`, aligned; dev and eval show accuracy
    (a text task: its BLEU where text was generated, else its loss), "-" where nothing was recorded."""
    rows = []
    for s in summaries:
        epoch = "-" if s["best_epoch"] is None else f"{s['best_epoch']}/{s['epochs']}" + (" stopped" if s["stopped_early"] else "")
        rows.append([s["run"], s["method"], _count(s["trainable_parameters"]), _count(s["stored_numbers"]), s["size"],
                     epoch, _score(s["dev"]), _score(s["eval"]),
                     f"{s['eval']['macro_f1']:.4f}" if s["eval"] and "macro_f1" in s["eval"] else "-",
                     human_seconds(s["seconds"])])
    return "\n".join(aligned(COMPARE_COLUMNS, rows, text_columns=2))


def _count(value) -> str:
    return "-" if value is None else f"{value:,}"


def _score(numbers: dict | None) -> str:
    if not numbers:
        return "-"
    if "accuracy" in numbers:
        return f"{numbers['accuracy']:.4f}"
    return f"BLEU {numbers['bleu']:.2f}" if "bleu" in numbers else f"loss {numbers['loss']:.4f}"


def aligned(header: list[str], rows: list[list[str]], *, text_columns: int = 1) -> list[str]:
    """Lines of a table, columns two spaces apart: the first `text_columns` left-aligned, the numbers
    after them right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    return ["  ".join(str(cell).ljust(w) if i < text_columns else str(cell).rjust(w)
                      for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in (header, *rows)]


def human_bytes(size: int) -> str:
    """'812 B', '12.3 KiB', '418.9 MiB', '1.25 GiB'."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            value = size / scale
            return f"{value:.2f} {unit}" if value < 10 else f"{value:.1f} {unit}"
    return f"{size} B"


def human_seconds(seconds: float | None) -> str:
    """'-', '4.2 s', '3 min 05 s', '2 h 07 min'."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min {int(seconds % 60):02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"
