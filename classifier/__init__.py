"""Image classification by transfer learning, and its deployment.

    import classifier
    run = classifier.train(model="resnet18", mode="finetune", weights="imagenet", dataset="folder:photos")
    model = classifier.load(run.dir / "best.pt")          # or an exported .onnx / .ort
    model.predict(["a.jpg"], topk=3)[0].label
    model.evaluate("new_photos/").metrics["accuracy"]
    model.export(quantize="int8")

See classifier/api.py for the whole surface.
"""
from classifier.api import (EvalReport, Model, Prediction, Predictions, TrainResult, check_data, find_lr,
                            list_models, load, show_dataset, train)
from classifier.crossval import CrossValResult, cross_validate
from classifier.data.sources import register_dataset
from classifier.errors import ClassifierError
from classifier.label_issues import LabelIssues, find_label_issues
from classifier.version import __version__


def __getattr__(name):
    """``classifier.tune`` (classifier/search/): imported on first use, since it needs the optional Optuna."""
    if name == "tune":
        from classifier.search import tune

        return tune
    raise AttributeError(f"module 'classifier' has no attribute '{name}'")


__all__ = ["train", "tune", "register_dataset", "find_lr", "load", "check_data", "list_models", "show_dataset", "Model", "Prediction",
           "Predictions",
           "TrainResult", "EvalReport", "ClassifierError", "__version__", "cross_validate", "CrossValResult",
           "find_label_issues", "LabelIssues"]
