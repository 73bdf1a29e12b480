"""Where a run's Config values come from, in the order they apply: the task's Config class, the
CPU values of `--dataset synthetic`, a config file (`--config`: JSON, a run's config.json as it
is, or YAML), `--set KEY=VALUE`, then the flags that name one value (--seed, --split-seed,
--steps-per-epoch, --deterministic). Each value's source is recorded in the run's config.json
(mrcnn.config.VALUE_SOURCES_KEY), so a reader can tell a chosen value from a default.
"""
import json
import logging
import pathlib

from isic.errors import UserError
from mrcnn.config import _DERIVED_ATTRS, VALUE_SOURCES_KEY

log = logging.getLogger(__name__)

YAML_SUFFIXES = (".yaml", ".yml")
# What one image per detect() call needs in investigate, predict and export: a config file
# written by training does not change it.
INFERENCE_BATCH_KEYS = ("GPU_COUNT", "IMAGES_PER_GPU")
# The flags that set one Config value each.
FLAG_VALUES = (("seed", "SEED", "--seed"), ("split_seed", "SPLIT_SEED", "--split-seed"),
               ("steps_per_epoch", "STEPS_PER_EPOCH", "--steps-per-epoch"))


def read_config_file(path):
    """{attribute: value} of a JSON or YAML config file (by suffix; other names are tried as JSON,
    then YAML). The derived values and the value sources a run's config.json also holds are
    dropped: the config recomputes them."""
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"--config {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--config {path}: cannot be read ({e})") from None
    values = _parse(path, text)
    if not isinstance(values, dict):
        raise UserError(f"--config {path}: holds a {type(values).__name__}, not a mapping of Config attributes "
                        f"to values (e.g. BACKBONE: resnet50)")
    bad = [k for k in values if not isinstance(k, str)]
    if bad:
        raise UserError(f"--config {path}: the key {bad[0]!r} is not a Config attribute name")
    return {k: v for k, v in values.items() if k not in _DERIVED_ATTRS and k != VALUE_SOURCES_KEY}


def _parse(path, text):
    import yaml
    as_yaml = path.suffix.lower() in YAML_SUFFIXES
    if not as_yaml:
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            if path.suffix.lower() == ".json":
                raise UserError(f"--config {path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"--config {path}: not valid YAML or JSON{where}") from None


def check_keys(keys, config_class, origin):
    """Refuse a key that is not an attribute of `config_class`, naming it and the closest one."""
    known = set(config_class.attribute_names())
    for key in keys:
        if key not in known:
            raise UserError(f"{origin}: unknown Config attribute {key!r}{config_class.closest_attribute_hint(key)}")


def task_of(values, task, path, tasks):
    """The task of a config file's NAME when --task was not given; a NAME of another task than
    --task is refused (its heads and class count would not fit)."""
    name = values.get("NAME")
    if name is None or name not in tasks:
        return task
    if task is not None and task != name:
        raise UserError(f"--config {path} is a '{name}' config (NAME) but --task is {task}; drop --task or pass "
                        f"--task {name}")
    return name


def option_values(args, file_values, inference):
    """[(attribute, value, source)] of the config file, --set and the value flags, in the order
    they apply (later wins). In the inference modes a config file's batch values are left out."""
    from lesions import parse_override
    items = []
    if file_values:
        label = f"config file {args.config}"
        for key, value in file_values.items():
            if inference and key in INFERENCE_BATCH_KEYS:
                log.debug("--config %s: %s left out (inference runs one image at a time)", args.config, key)
                continue
            items.append((key, value, label))
    for text in args.overrides:
        key, value = parse_override(text)
        items.append((key, value, "--set"))
    for attr, key, flag in FLAG_VALUES:
        value = getattr(args, attr, None)
        if value is not None:
            items.append((key, value, flag))
    if getattr(args, "deterministic", False):
        items.append(("DETERMINISTIC", True, "--deterministic"))
    return items
