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

from . import llm, poisoning
from .backdoor import (
    AllToAll,
    GeneratedTrigger,
    PoisonedSet,
    TriggerGenerator,
    badnets,
    ban,
    clean_label,
    composite,
    multi_target,
    pgd_away,
    trigger_diversity,
)
from .data import DatasetNotFoundError, ImageData, TabularData, load_dataset, load_diabetes, load_randhie
from .experiments import (
    PROFILES,
    AttackReport,
    Profile,
    ReportTable,
    count_sweep,
    evaluate_backdoor,
    evaluate_multi_target,
    get_profile,
    load_lab_data,
    train_and_evaluate,
)
from .io import IntegrityError, load_model, save_model, sha256_file
from .metrics import attack_success_rate, auroc, clean_accuracy, detection_scores
from .models import MLP, ResNet18, SmallCNN, build_model
from .training import (
    TrainConfig,
    configure_threads,
    fit,
    pick_device,
    predict,
    predict_proba,
    seed_everything,
    train_model,
)
from .triggers import (
    Blend,
    BlendedPatch,
    Compose,
    Patch,
    RandomPatch,
    Trigger,
    checkerboard,
    noise_key,
    region_grid,
    white_square,
)

__version__ = "0.1.0"

__all__ = [
    "AllToAll", "AttackReport", "Blend", "BlendedPatch", "Compose", "DatasetNotFoundError", "GeneratedTrigger",
    "ImageData", "IntegrityError", "MLP", "PROFILES", "Patch", "PoisonedSet", "Profile", "RandomPatch", "ReportTable",
    "ResNet18", "SmallCNN", "TabularData", "TrainConfig", "Trigger", "TriggerGenerator", "attack_success_rate",
    "auroc", "badnets", "ban", "build_model", "checkerboard", "clean_accuracy", "clean_label",
    "composite", "configure_threads", "count_sweep", "detection_scores", "evaluate_backdoor",
    "evaluate_multi_target", "fit", "get_profile", "load_dataset", "load_diabetes", "load_randhie", "llm",
    "poisoning", "load_lab_data", "load_model", "multi_target",
    "noise_key", "pgd_away", "pick_device", "predict", "predict_proba", "region_grid", "save_model",
    "seed_everything", "sha256_file", "train_and_evaluate", "train_model", "trigger_diversity", "white_square",
]
