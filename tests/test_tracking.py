"""MLflow logging (classifier/tracking.py): a run's parameters, one validation point per epoch, test metrics
and artefacts, read back with MlflowClient; a tracker that cannot be reached warns and training goes on."""
from __future__ import annotations

import json

import pytest

import classifier
from classifier.tracking import TrackingWarning, tracking_uri
from tests.conftest import stripes

mlflow = pytest.importorskip("mlflow")
FAST = dict(model="lenet5", batch_size=16, progress=False, amp="off", workers=0, tensorboard=False, plots=False)


def test_mlflow_run_has_params_epochs_test_metrics_and_artefacts(tmp_path):
    from mlflow.tracking import MlflowClient

    store = tmp_path / "mlruns"
    run = classifier.train(dataset=stripes(36, 12), epochs=2, lr=0.03, project=str(tmp_path), name="tracked",
                           mlflow=str(store), **FAST)
    record = json.loads((run.dir / "mlflow.json").read_text())
    assert record["tracking_uri"] == tracking_uri(str(store))[0] == f"sqlite:///{store / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    logged = client.get_run(record["run_id"])
    assert logged.info.status == "FINISHED" and logged.info.run_name == "tracked"
    assert logged.data.params["lr"] == "0.03" and logged.data.params["model"] == "lenet5"
    assert logged.data.params["mlflow"] == str(store)
    val = client.get_metric_history(record["run_id"], "val_acc")
    assert [m.step for m in val] == [1, 2]  # one validation point per epoch
    assert [m.value for m in val] == pytest.approx([r["val_acc"] for r in run.history])
    assert logged.data.metrics["test_accuracy"] == pytest.approx(run.metrics["accuracy"])
    names = {a.path for a in client.list_artifacts(record["run_id"])}
    assert {"best.pt", "config.yaml", "history.csv", "eval"} <= names
    # an export of the run joins its artefacts
    onnx = run.model.export()
    assert f"export/{onnx.name}" in {a.path for a in client.list_artifacts(record["run_id"], "export")}
    # a resume logs on into the same MLflow run; an interrupted one ends KILLED, not RUNNING

    def stop_after_epoch_3(run, row):
        if row["epoch"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        classifier.train(resume=run.dir, dataset=stripes(36, 12), epochs=4,
                         callbacks={"on_epoch_end": [stop_after_epoch_3]})
    assert [m.step for m in client.get_metric_history(record["run_id"], "val_acc")] == [1, 2, 3]
    assert client.get_run(record["run_id"]).info.status == "KILLED"
    classifier.train(resume=run.dir, dataset=stripes(36, 12), epochs=4)
    assert [m.step for m in client.get_metric_history(record["run_id"], "val_acc")] == [1, 2, 3, 4]
    assert client.get_run(record["run_id"]).info.status == "FINISHED"


def test_unreachable_tracking_uri_warns_and_trains(tmp_path):
    with pytest.warns(TrackingWarning, match="MLflow logging off"):
        run = classifier.train(dataset=stripes(36, 12), epochs=1, project=str(tmp_path), name="offline",
                               mlflow="http://127.0.0.1:9", **FAST)
    assert len(run.history) == 1 and (run.dir / "best.pt").is_file() and not (run.dir / "mlflow.json").exists()
