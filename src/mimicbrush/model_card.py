"""The model card (README.md) every exported model carries: where each component's weights come
from, under which licence (mimicbrush.licences), what the run did to it, the licence the model
declares in its front matter, and the training data record (training_data.json)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import __version__
from .licences import LICENCES, RELEASE, UNKNOWN, carried_licences, describe, known_source, model_licence

MODEL_CARD_FILE = "README.md"
LISTED_FOLDERS = 12  # of the training data record; the file has them all


@dataclass(frozen=True)
class ComponentOrigin:
    """Where one component's weights come from, and what the run did to them."""

    role: str
    parameters: int
    source: str | None = None  # hub id or local path it was loaded from; None: made in this run
    subfolder: str | None = None
    trained: bool = False  # updated by this run
    shown_as: str | None = None  # how the card names the source (a local path relative to the config)


@dataclass(frozen=True)
class SourceLicences:
    licences: list[str]  # its own first, then those it carries on; empty: unknown
    key: str | None = None  # its entry in mimicbrush.licences.SOURCES
    from_its_card: bool = False  # read from a local folder's own model card


def source_licences(source: str) -> SourceLicences:
    """The licences a pretrained source carries: from the package's table (a hub id, a
    checkpoint's name, a Hugging Face cache folder, a folder in the release's layout), else
    from a local folder's own model card; empty when neither says."""
    key = known_source(source)
    path = Path(source)
    if key is None and path.is_dir():
        from .weights import is_release_layout

        if is_release_layout(path):
            key = RELEASE
        elif (declared := declared_licence(path / MODEL_CARD_FILE)) not in (None, "unknown"):
            return SourceLicences([declared], from_its_card=True)
    if key is None:
        return SourceLicences([])
    return SourceLicences(carried_licences(key), key)


def declared_licence(card: Path) -> str | None:
    """The `license:` of a model card's front matter, if it has one."""
    try:
        text = card.read_text()
    except OSError:
        return None
    front = re.match(r"---\n(.*?)\n---\n", text, re.S)
    try:
        meta = yaml.safe_load(front.group(1)) if front else None
    except yaml.YAMLError:
        return None
    licence = meta.get("license") if isinstance(meta, dict) else None
    return licence if isinstance(licence, str) else None


def model_card(origins: Sequence[ComponentOrigin], *, title: str, summary: str, record: Mapping | None = None,
               data_licence: str | None = None) -> str:
    """The README.md of a model made of `origins`. `data_licence`: the licence of the data the
    run trained on, when its config declares one (export.data_licence)."""
    trained_here = any(origin.trained for origin in origins)
    rows = []
    carried: list[str | None] = []  # every licence the weights carry; None: a source of unknown licence
    base_models: list[str] = []  # the hub ids they derive from, as the Hub's `base_model` lists them
    for origin in origins:
        found = source_licences(origin.source) if origin.source is not None else None
        if found is not None:
            carried += found.licences or [None]
            if found.key and "/" in found.key and found.key not in base_models:
                base_models.append(found.key)
        rows.append(f"| {origin.role} | {origin.parameters / 1e6:,.1f} M | {_source_cell(origin)} | "
                    f"{_licence_cell(origin, found)} | {_what_happened(origin)} |")
    if trained_here and data_licence:
        carried.append(data_licence)
    licence = model_licence(carried)
    front = {"license": licence, "library_name": "diffusers", "pipeline_tag": "image-to-image"}
    if base_models:
        front["base_model"] = base_models
    front["tags"] = ["mimicbrush", "image-editing", "reference-imitation"]
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---", "",
             f"# {title}", "", summary, "",
             "Edit with it: `mimicbrush edit SOURCE --mask MASK --reference REF -o OUT --model THIS_FOLDER`.", "",
             "## Where the weights come from", "",
             "| component | parameters | source | licence | in this run |", "| --- | ---: | --- | --- | --- |",
             *rows, "", "## Licence", "", *_licence_text(licence, carried, trained_here, data_licence), "",
             "## Training data", "", *_data_text(record, trained_here)]
    return "\n".join(lines) + "\n"


def _source_cell(origin: ComponentOrigin) -> str:
    if origin.source is None:
        return "—"
    shown = f"`{origin.shown_as or origin.source}`"
    return f"{shown} ({origin.subfolder})" if origin.subfolder else shown


def _licence_cell(origin: ComponentOrigin, found: SourceLicences | None) -> str:
    if found is None:
        if not origin.parameters:
            return "parameter-free: no weights"
        if origin.trained:
            return "trained from scratch in this run: the training data's terms (`training_data.json`)"
        return "random initialisation, not trained: no terms of its own"
    if not found.licences:
        return UNKNOWN
    own, *inherited = found.licences
    text = describe(own)
    if inherited:
        text += "; derived from weights under " + ", ".join(describe(licence) for licence in inherited)
    return text + (" (from its own model card)" if found.from_its_card else "")


def _what_happened(origin: ComponentOrigin) -> str:
    if not origin.parameters:
        return "—"
    if origin.source is None:
        return "trained from scratch" if origin.trained else "frozen"
    return "fine-tuned" if origin.trained else "unchanged"


def _licence_text(licence: str, carried: list[str | None], trained_here: bool, data_licence: str | None) -> list[str]:
    known = [item for item in dict.fromkeys(carried) if item is not None]
    if licence == "unknown":
        lines = ["**Unknown.** A source of these weights is not in mimicbrush's licence table and has no model "
                 "card of its own that says: check its terms before you share or use this model."
                 if None in carried else
                 "**Unknown.** Every component was made in this run, and its config declares no licence for the "
                 "training data (`export.data_licence`): the data's terms decide, check them before you share."]
    elif licence == "other":
        lines = ["**Several licences apply together** (`license: other`), each to the weights derived from its "
                 "source, and the use restrictions of each bind the whole model:"]
    elif len(known) == 1:
        lines = [f"**{describe(licence)}**: the only terms these weights carry."]
    else:
        lines = [f"**{describe(licence)}**: of the terms these weights carry, the one beyond attribution; the "
                 "others only ask that their notices be kept:"]
    for item in known:
        entry = LICENCES.get(item)
        if entry is None:
            lines.append(f"- `{item}`")
        elif entry.restricts_use:
            lines.append(f"- {entry.name} ({entry.url}): its use restrictions carry over to this model and to "
                         "anything derived from it; pass them on to whoever you share it with.")
        else:
            lines.append(f"- {entry.name} ({entry.url}): keep its copyright and licence notice.")
    if trained_here and not data_licence:
        lines += ["", "The weights this run trained also carry the terms of its training data, which the config "
                  "does not declare (`export.data_licence`): check the sources in `training_data.json` before "
                  "you share this model."]
    elif trained_here:
        lines += ["", f"Its config declares the training data's licence (`export.data_licence`): {describe(data_licence)}."]
    lines += ["", "mimicbrush's code is Apache-2.0; the weights' terms are the ones above."]
    return lines


def _data_text(record: Mapping | None, trained_here: bool) -> list[str]:
    if record is None:
        return ["No training data record: " + ("this run wrote none." if trained_here
                                               else "these weights were converted, not trained here.")]
    trained_on = list(record.get("trained_on", []))
    held_out = list(record.get("held_out_for_the_imitation_metric", []))
    held = f"the {len(held_out)} it held out for the imitation metric" if held_out else "nothing held out"
    lines = [f"`training_data.json` beside the weights lists every folder this run trained on ({len(trained_on)}; "
             f"{held}), paths relative to {record.get('paths_relative_to', 'the training config folder')}:", ""]
    lines += [f"- `{folder}`" for folder in trained_on[:LISTED_FOLDERS]]
    if len(trained_on) > LISTED_FOLDERS:
        lines.append(f"- … and {len(trained_on) - LISTED_FOLDERS} more")
    return lines


# ---------------------------------------------------------------------------------------------
# What an export knows


def parameter_counts(pipeline) -> dict[str, int]:
    """Parameters of each of a pipeline's model components, in its order."""
    import torch

    return {role: sum(p.numel() for p in module.parameters())
            for role, module in pipeline.components.items() if isinstance(module, torch.nn.Module)}


def training_card(config, parameters: Mapping[str, int], record: Mapping | None) -> str:
    """The card of a model a training run exports (`config`: its TrainConfig)."""
    model, trainable = config.model, set(config.train.trainable)
    origins = []
    for role, count in parameters.items():
        spec = model.components.get(role)
        source = model.pretrained or (spec.pretrained if spec is not None else None)
        subfolder = None if model.pretrained or spec is None else spec.subfolder
        origins.append(ComponentOrigin(role, count, source, subfolder, trained=role in trainable and count > 0,
                                       shown_as=_relative(source, config.base_dir)))
    summary = (f"A MimicBrush model (imitative U-Net, reference U-Net with reference attention, image-embedding "
               f"cross-attention, depth guider) exported by mimicbrush {__version__} from the training config "
               f"`{config.config_path.name}`; it edits at {config.data.resolution} × {config.data.resolution} pixels.")
    return model_card(origins, title=f"MimicBrush model: {config.config_path.stem}", summary=summary, record=record,
                      data_licence=config.export.data_licence)


def release_card(release_dir: Path, parameters: Mapping[str, int]) -> str:
    """The card of `mimicbrush convert`'s output: every component from the authors' release."""
    origins = [ComponentOrigin(role, count, str(release_dir), shown_as=f"{RELEASE} (release layout)")
               for role, count in parameters.items()]
    summary = (f"The authors' released MimicBrush weights ({RELEASE}), converted by mimicbrush {__version__} "
               "(`mimicbrush convert`) from the release's pickle layout to safetensors, one folder per component.")
    return model_card(origins, title="MimicBrush (the authors' release, converted)", summary=summary)


def _relative(source: str | None, base: Path) -> str | None:
    """A local path as the card shows it: relative to the config's folder (an absolute path
    would name the machine it was trained on); a hub id as it is."""
    if source is None or not Path(source).is_absolute():
        return source
    return Path(os.path.relpath(source, base)).as_posix()
