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
from classifier.errors import ClassifierError
from classifier.version import __version__

__all__ = ["train", "find_lr", "load", "check_data", "list_models", "show_dataset", "Model", "Prediction",
           "Predictions",
           "TrainResult", "EvalReport", "ClassifierError", "__version__"]
