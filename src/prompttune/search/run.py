"""`prompttune search triggers|labels|templates`: a run config in, the same config with the found
prompt out (`DIR/config.yaml`, ready for `prompttune train`), plus `DIR/search.json` — the
settings, every ranked candidate, and zero-shot dev accuracy of the config's own prompt beside
the found one.

Data follow the run config: `task.shots` draws K per class for train and K for dev (LM-BFF's
protocol), else `task.train` / `task.dev`. The searches read train; choices are made on dev.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path

import yaml

from ..backbones import load_backbone
from ..config import RunConfig, load_config, read_config_file
from ..devices import resolve_device, resolve_dtype
from ..errors import ConfigError, TemplateError
from ..files import json_writer, text_writer, write_together
from ..outputs import claim_output, json_marked
from ..recipes import load_splits, task_labels
from ..task import require_lm_head
from ..templates import parse_template
from ..verbalizers import parse_verbalizer
from .common import zero_shot_accuracy

KINDS = ("triggers", "labels", "templates")
SEARCH_FILES = ("config.yaml", "search.json")


def run_search(kind: str, config_path: str | Path, out: str | Path, *, overrides: list[str] = (), overwrite: bool = False,
               log=None, device: str = "auto", dtype: str | None = None, **settings) -> dict:
    """Run one search; write `out/config.yaml` and `out/search.json` (together); return the report.

    The model (and `templates`' T5) runs on `device` (`devices.resolve_device`), in `dtype` (default:
    the config's model_dtype; the written config keeps its own).

    `out` is held for the search (`outputs.claim_output`): files of an earlier search there are
    replaced only with `overwrite` (else `OutputError`, before the model loads).

    Example:
        >>> run_search("labels", "configs/sst2_zero_shot.yaml", "runs/labels", per_class=20)["found"]
        {'verbalizer': {'0': ['awful'], '1': ['wonderful']}}
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if kind not in KINDS:
        raise ConfigError(f"unknown search {kind!r}; one of {list(KINDS)}")
    place = resolve_device(device)
    raw = read_config_file(config_path, overrides)  # paths absolute, so the config written to `out` works from there
    cfg: RunConfig = load_config(raw=copy.deepcopy(raw))
    weights = resolve_dtype(dtype, place) if dtype is not None else resolve_dtype(cfg.model_dtype, place, key="model_dtype")
    train, dev, _ = load_splits(cfg)
    if not train:
        raise ConfigError("a search reads training examples: set task.train")
    if kind != "triggers" and not dev:
        raise ConfigError(f"search {kind} chooses on development data: set task.dev, or task.shots to draw K per class "
                          "for dev from task.train")
    template, verbalizer = parse_template(cfg.prompt.template), parse_verbalizer(cfg.prompt.verbalizer)
    if (kind == "triggers") != bool(template.n_triggers):
        raise TemplateError(f"template {template.source!r} " + (
            "has no {trigger} slot to search; add some, e.g. '{sentence} {trigger:3} {mask}.'" if kind == "triggers" else
            "has {trigger} slots: fill them first with `prompttune search triggers`"))
    with claim_output(out, owned=SEARCH_FILES, what="a search's config.yaml and search.json", overwrite=overwrite,
                      is_ours=lambda d: json_marked(d / "search.json", "found")) as out:
        backbone = load_backbone(cfg.model, kind=cfg.model_kind, lm_head=cfg.lm_head, dtype=weights)
        backbone.model.to(place)
        require_lm_head(backbone)
        n = cfg.train.max_length
        log(f"search {kind}: {len(train)} train / {len(dev)} dev examples on {cfg.model}")

        if kind == "triggers":
            from .triggers import search_triggers

            result = search_triggers(backbone, template, verbalizer, train, max_length=n, seed=cfg.train.seed,
                                     progress=cfg.train.progress, **settings)
            found = {"template": result.template}
        elif kind == "labels":
            from .label_words import search_label_words

            result = search_label_words(backbone, template, task_labels(cfg, train), train, dev, max_length=n,
                                        progress=cfg.train.progress, **settings)
            found = {"verbalizer": result.verbalizer}
        else:
            from .template_generation import generate_templates

            result = generate_templates(settings.pop("generator"), backbone, verbalizer, list(cfg.task.text_fields), train,
                                        dev, max_length=n, progress=cfg.train.progress, **settings)
            found = {"template": result.template}

        new = copy.deepcopy(raw)
        new.setdefault("prompt", {}).update(found)
        load_config(raw=copy.deepcopy(new))  # the written config must be one `prompttune train` accepts
        report = {"search": kind, "settings": settings, "found": found, "result": dataclasses.asdict(result)}
        if dev:
            found_template = parse_template(new["prompt"]["template"])
            found_verbalizer = parse_verbalizer(new["prompt"]["verbalizer"])
            report["dev_accuracy"] = {"found": zero_shot_accuracy(backbone, found_template, found_verbalizer, dev, max_length=n)}
            if not template.n_triggers:
                report["dev_accuracy"]["config"] = zero_shot_accuracy(backbone, template, verbalizer, dev, max_length=n)
        write_together(out, {"config.yaml": text_writer(yaml.safe_dump(new, sort_keys=False, allow_unicode=True)),
                             "search.json": json_writer(report)})
        log(f"found {found}; wrote {out / 'config.yaml'} and {out / 'search.json'}")
    return report
