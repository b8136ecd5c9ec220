"""Where gradwatch's numbers and alerts can go besides its own TensorBoard run.

- :class:`Sink` (also ``gradwatch.Sink``): the interface of your own sink, and
  :class:`BaseSink`, its do-nothing implementation to subclass;
- :class:`MLflowSink`: into an MLflow run (``pip install 'gradwatch[mlflow]'``);
- :class:`WandbSink`: into a Weights & Biases run (``pip install 'gradwatch[wandb]'``).

Pass them as ``gradwatch.watch(model, optimizer, sinks=[...])``. MLflow and W&B are
imported only when their sink is created. To log into your own
``torch.utils.tensorboard.SummaryWriter``, pass it as ``watch(..., writer=...)``.
"""

from gradwatch._sinks.mlflow_sink import MLflowSink
from gradwatch._sinks.public import BaseSink, Sink
from gradwatch._sinks.wandb_sink import WandbSink

__all__ = ["BaseSink", "MLflowSink", "Sink", "WandbSink"]
