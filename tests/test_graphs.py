"""core.flow.graphs without Qt (so it runs on a GPU machine without the explorer installed):
off on the CPU; on CUDA every replayed step agrees with eager decoding."""

from __future__ import annotations

import pytest
import torch

from core.flow.graphs import GraphedDecoder, agreement, graphs_supported
from core.flow.inference import fold_for_inference

CUDA = torch.cuda.is_available()


def test_graphs_are_off_on_the_cpu(make_perturbed_model):
    model = make_perturbed_model()
    assert graphs_supported(model) == "the model is not on a CUDA device"
    decoder = GraphedDecoder(model)
    assert decoder.build() == "off: the model is not on a CUDA device"
    assert not decoder.ready
    z = torch.zeros(1, *model.latent_shapes[-1])
    assert decoder.step(model.num_levels - 1, z) is None  # the caller decodes eagerly
    assert agreement(model) == {"status": "off: the model is not on a CUDA device", "batches": {}}


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_graphs_agree_with_eager_decoding(make_perturbed_model):
    model = fold_for_inference(make_perturbed_model()).cuda()
    decoder = GraphedDecoder(model, batches=(1, 16))
    status = decoder.build()
    assert status.startswith("on: "), status
    assert not decoder.failed
    with torch.inference_mode():
        for batch in (1, 16):
            zs = [torch.randn(batch, *s, device="cuda") for s in model.latent_shapes]
            torch.testing.assert_close(decoder.decode(zs), model.decode(zs), rtol=1e-4, atol=1e-4)
    decoder.release()
    assert decoder.graph_count == 0


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_agreement_report(make_perturbed_model):
    report = agreement(fold_for_inference(make_perturbed_model()).cuda(), repeats=3)
    assert report["status"].startswith("on: ")
    for figures in report["batches"].values():
        assert figures["max_abs_diff"] <= 1e-4
        assert figures["eager_ms"] > 0 and figures["graph_ms"] > 0
