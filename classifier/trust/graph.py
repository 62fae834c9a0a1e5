"""The exported graph's trust outputs beside the logits: ``ood_score`` (feature scores, computed in the
graph from the stored statistics) and ``cam`` (``export.py --cam``: the plain CAM of the top class at the
feature resolution). Logit scores and the temperature need no graph change: clients apply the metadata."""
from __future__ import annotations

import torch
from torch import nn

from classifier.artifact import OUTPUT_NAME
from classifier.models import cam_target
from classifier.trust.explain import CAM_OUTPUT, FeatureMap, check_plain_cam, top_class_cam
from classifier.trust.ood import OOD_OUTPUT, FeatureScore, score_entry


class TrustGraph(nn.Module):
    """model -> (logits[, ood_score][, cam]) in that order. ``mirror``: the logits averaged with the mirror
    image's (the test-time flip, inside the graph: the web page), the score of the image itself (as
    ``Predictor`` computes both)."""

    def __init__(self, model: nn.Module, score: FeatureScore | None = None, cam: bool = False,
                 mirror: bool = False):
        super().__init__()
        if cam:
            check_plain_cam(model)
        self.model, self.score, self.cam, self.mirror = model, score, cam, mirror
        self.layer = cam_target(model).layer if cam else None

    @property
    def output_names(self) -> tuple[str, ...]:
        return (OUTPUT_NAME,) + ((OOD_OUTPUT,) if self.score is not None else ()) + ((CAM_OUTPUT,) if self.cam else ())

    def forward(self, x):
        if self.cam:
            with FeatureMap(self.model, self.layer) as fm:
                features = self.model.forward_features(x)
        else:
            features = self.model.forward_features(x)
        logits = self.model.forward_head(features)
        if self.mirror:
            logits = (logits + self.model(torch.flip(x, dims=[-1]))) / 2  # inference.flip_averaged's rule
        outputs = [logits]
        if self.score is not None:
            outputs.append(self.score(features))
        if self.cam:
            outputs.append(top_class_cam(self.model, logits, fm.value))
        return tuple(outputs)


def feature_score(ckpt: dict) -> FeatureScore | None:
    """The checkpoint's "unknown" score as graph operations, when it is a feature score (else None)."""
    ood = ckpt.get("ood") or {}
    if ood.get("score") and score_entry(ood["score"]).on_features and ood.get("stats") is not None:
        return FeatureScore(ood["score"], ood["stats"])
    return None


def trust_graph(model: nn.Module, ckpt: dict, *, cam: bool = False) -> tuple[nn.Module, tuple[str, ...]]:
    """(the network to export, its output names): ``model`` itself when nothing is added."""
    score = feature_score(ckpt)
    if score is None and not cam:
        return model, (OUTPUT_NAME,)
    net = TrustGraph(model, score, cam).eval()
    return net, net.output_names
