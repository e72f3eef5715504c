"""labsupport: the package behind the poisoning-labs course.

One import gives a lab everything it calls::

    import labsupport as ls
    data = ls.load_dataset("fashion-mnist")
    poisoned = ls.badnets(data.x_train, data.y_train, ls.Patch(), target=9, rate=0.01)
    model = ls.train_model("mlp", poisoned.x, poisoned.y)
    ls.attack_success_rate(model, data.x_test, data.y_test, poisoned.trigger, 9)

Modules, one per topic: ``data``, ``models``, ``training``, ``metrics``, ``triggers``,
``backdoor``, ``poisoning`` (Lab 1 attacks), ``experiments`` (profiles and reports), ``viz``,
``checks`` (exercise feedback), ``course`` (student-notebook generation), ``io`` (safetensors,
atomic writes), ``cli``.
"""

import importlib

__version__ = "0.1.0"

# The package loads lazily (PEP 562): ``import labsupport`` and the command line start in a fraction
# of a second, and each name's module (with torch or scikit-learn behind it) loads on first use.
_EXPORTS = {
    "backdoor": ("AllToAll", "GeneratedTrigger", "PoisonedSet", "TriggerGenerator", "badnets", "ban",
                 "clean_label", "composite", "multi_target", "pgd_away", "trigger_diversity"),
    "data": ("DatasetNotFoundError", "ImageData", "TabularData", "load_dataset", "load_diabetes", "load_randhie"),
    "experiments": ("PROFILES", "AttackReport", "Profile", "ReportTable", "count_sweep", "evaluate_backdoor",
                    "evaluate_multi_target", "get_profile", "load_lab_data", "train_and_evaluate"),
    "io": ("IntegrityError", "load_model", "save_model", "sha256_file"),
    "metrics": ("attack_success_rate", "auroc", "clean_accuracy", "detection_scores"),
    "models": ("MLP", "ResNet18", "SmallCNN", "build_model"),
    "training": ("TrainConfig", "configure_threads", "fit", "pick_device", "predict", "predict_proba",
                 "seed_everything", "train_model"),
    "triggers": ("Blend", "BlendedPatch", "Compose", "Patch", "RandomPatch", "Trigger", "checkerboard",
                 "noise_key", "region_grid", "white_square"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted([*_WHERE, "llm", "poisoning"])


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value   # looked up once
        return value
    if not name.startswith("__"):   # a submodule: ls.llm, ls.io, ls.defenses, ...
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
