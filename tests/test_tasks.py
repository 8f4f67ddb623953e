"""Classification metrics that show a collapse, and the balanced loss against label skew."""

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from transformers.modeling_outputs import SequenceClassifierOutput

from fedfm.runtime.run import print_round
from fedfm.tasks import BalancedLoss, Classification, class_scores


class _Fixed(torch.nn.Module):
    """A 'model' whose logits are a trainable table indexed by the batch's ``x``."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(logits.clone())

    def forward(self, x: torch.Tensor) -> SequenceClassifierOutput:
        return SequenceClassifierOutput(logits=self.table[x])


def test_a_model_that_predicts_one_class_shows_it_in_recall_and_predicted_classes():
    logits = torch.tensor([[5.0, 0.0, 0.0]]).repeat(6, 1)  # always class 0
    batch = {"x": torch.arange(6), "labels": torch.tensor([0, 0, 0, 0, 1, 2])}
    result = Classification(3).evaluate(_Fixed(logits), [batch])
    assert result["accuracy"] == 4 / 6
    assert result["class_recall"] == [1.0, 0.0, 0.0] and result["predicted_classes"] == 1
    record = {
        "round": 3,
        "test_accuracy": 0.6,
        "test_predicted_classes": 1,
        "bytes_down": 0,
        "bytes_up": 0,
        "cum_bytes": 0,
        "full_model_cum_bytes": 0,
        "seconds": 1.0,
        "excluded": [{"client": 4, "reason": "late"}],
    }
    console = Console(record=True, width=400)
    print_round(console, record, 8)
    assert (
        console.export_text()
        .rstrip()
        .endswith("[excluded 1]  [warning: the global model predicts a single class]")
    )


def test_the_balanced_loss_is_cross_entropy_of_logits_plus_the_log_prior():
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    batch = {"x": torch.arange(4), "labels": torch.tensor([0, 0, 0, 2])}
    counts = np.array([30, 0, 10])
    model = _Fixed(logits)
    loss = BalancedLoss(Classification(3), counts).loss(model, batch)
    prior = torch.tensor([0.75, 1e-12, 0.25])
    assert torch.allclose(loss, F.cross_entropy(logits + prior.log(), batch["labels"]))
    loss.backward()
    # a class the client does not hold gets (next to) no gradient: no push away from it
    assert model.table.grad[:, 1].abs().max() < 1e-9
    model.table.grad = None
    F.cross_entropy(model.table, batch["labels"]).backward()
    assert model.table.grad[:, 1].abs().max() > 1e-3  # plain cross-entropy does push


def test_the_balanced_task_evaluates_like_the_plain_one():
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    batch = {"x": torch.arange(5), "labels": torch.tensor([0, 1, 2, 1, 0])}
    plain = Classification(3)
    balanced = BalancedLoss(plain, np.array([1, 1, 8]))
    assert balanced.evaluate(_Fixed(logits), [batch]) == plain.evaluate(_Fixed(logits), [batch])
    assert (balanced.name, balanced.main_metric) == (plain.name, plain.main_metric)


def test_clients_train_the_balanced_loss_unless_the_run_is_personalised():
    from fedfm.config import load_config
    from fedfm.runtime.job import build_job

    base = ["data.dataset=digits", "model.name=mlp", "adapter.method=full", "data.num_clients=2"]
    for extra, balanced in (
        ([], True),
        (["client.loss=ce"], False),
        (["strategy.name=local"], False),
        (['strategy.personal=["classifier"]'], False),
    ):
        job = build_job(load_config(None, [*base, *extra]))
        client = job.federation[0]
        task = job.client_context().local_task(client.train)
        assert isinstance(task, BalancedLoss) == balanced, extra
        if balanced:
            counts = np.bincount(job.train.labels[client.train], minlength=10)
            assert torch.allclose(task.offset.exp(), torch.tensor(counts / counts.sum()).float())


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 7).flatmap(
        lambda k: st.tuples(
            st.just(k),
            st.lists(st.tuples(st.integers(0, k - 1), st.integers(0, k - 1)), min_size=1),
        )
    )
)
def test_class_scores_equal_scikit_learn_float_for_float(case):
    from sklearn.metrics import f1_score, recall_score

    k, pairs = case
    y_true, y_pred = (np.array(column, dtype=np.int64) for column in zip(*pairs, strict=True))
    f1, recall = class_scores(y_true, y_pred, k)
    labels = list(range(k))
    kwargs = {"labels": labels, "zero_division": 0}
    assert f1.tolist() == f1_score(y_true, y_pred, average=None, **kwargs).tolist()
    assert float(f1.mean()) == float(f1_score(y_true, y_pred, average="macro", **kwargs))
    assert recall.tolist() == recall_score(y_true, y_pred, average=None, **kwargs).tolist()
