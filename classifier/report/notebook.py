"""How an evaluation shows itself in a notebook (Jupyter's ``_repr_html_`` / ``_repr_markdown_``)."""
from __future__ import annotations

import base64
from pathlib import Path


def report_markdown(folder: Path) -> str | None:
    """The report folder's report.md, or None when it has none."""
    path = Path(folder) / "report.md"
    return path.read_text() if path.is_file() else None


def report_html(metrics: dict, folder: Path) -> str:
    """Accuracy, the per-class table and the confusion matrix figure (inlined) of an evaluation."""
    def cell(value):
        return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

    folder = Path(folder)
    rows = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in (name, m.get("precision"), m.get("recall"),
                                                                     m.get("f1"), m.get("support"))) + "</tr>"
                   for name, m in metrics.get("per_class", {}).items())
    html = (f"<p><b>accuracy {metrics['accuracy']:.2%}</b> on {metrics.get('n_samples')} images "
            f"(report: <code>{folder / 'report.md'}</code>)</p><table><tr><th>class</th><th>precision</th>"
            f"<th>recall</th><th>F1</th><th>support</th></tr>{rows}</table>")
    figure = next(iter(sorted((folder / "figures").glob("confusion*.png"))), None) \
        if (folder / "figures").is_dir() else None
    if figure is not None:
        html += f'<img src="data:image/png;base64,{base64.b64encode(figure.read_bytes()).decode()}" width="480"/>'
    return html
