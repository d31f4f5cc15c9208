"""Image task with a context set: padding invariance, masks, the learned null, CFG dropout, batches."""
import pytest
import torch

from ditlab.config import ModelConfig
from ditlab.data.context_sets import ContextSet
from ditlab.data.dataset import ImageData
from ditlab.diffusion.objectives import Objective
from ditlab.diffusion.schedules import FlowSchedule
from ditlab.tasks.image.model import STREAM, build_image_model
from ditlab.tasks.image.task import ImageTask
from ditlab.tasks.image.data import ImageTrainData

D = 6


def make(num_classes=0, label_dropout=0.0, context_dropout=0.0, perturb=True, qk_norm=False):
    torch.manual_seed(0)
    cfg = ModelConfig(arch="DiT-S/2", hidden_size=32, depth=2, num_heads=2, num_classes=num_classes, qk_norm=qk_norm)
    model = build_image_model(cfg, 8, 3, context_dim=D)
    if perturb:  # adaLN-Zero starts as the identity (zero output): perturb so outputs depend on the context
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return ImageTask(model, Objective(FlowSchedule(), "velocity"), label_dropout, context_dropout), model


def padded(lengths, m, seed=0):
    """Context sets of the given lengths padded to m tokens; the real tokens do not depend on m
    and the padding is garbage (which the mask must hide)."""
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(len(lengths), max(lengths), D, generator=g)
    emb = 100 * torch.randn(len(lengths), m, D, generator=g)
    mask = torch.arange(m)[None] < torch.tensor(lengths)[:, None]
    emb[:, : real.shape[1]] = torch.where(mask[:, : real.shape[1], None], real, emb[:, : real.shape[1]])
    return emb, mask


def denoised(task, model, x, t, context, drop):
    cond = {"context": context[0], "context_mask": context[1]} if context is not None else {}
    return task.denoiser(model, cond)({STREAM: x}, {STREAM: t}, drop)[STREAM][0]


def test_padding_does_not_change_the_output_but_the_mask_does():
    task, model = make()
    model.eval()
    lengths = [3, 10, 0, 7]  # a row with no real token sees the learned null
    x, t, keep = torch.randn(4, 3, 8, 8), torch.full((4,), 0.5), torch.zeros(4, dtype=torch.bool)
    out10 = denoised(task, model, x, t, padded(lengths, 10), keep)
    out16 = denoised(task, model, x, t, padded(lengths, 16), keep)
    torch.testing.assert_close(out10, out16, atol=1e-5, rtol=0)
    emb, mask = padded(lengths, 16)
    inverted = denoised(task, model, x, t, (emb, ~mask), keep)  # attends to the garbage instead
    changed = (inverted - out16).abs().flatten(1).amax(1)
    assert (changed[[0, 1, 3]] > 1e-2).all()  # rows 0, 1, 3 had padding (row 1: 10 real of 16)
    # Row 2 (no real token, inverted: all 16 garbage tokens real) now sees a context instead of the null.
    assert changed[2] > 1e-2


def test_context_is_used_and_dropping_it_removes_it():
    task, model = make()
    model.eval()
    x, t = torch.randn(2, 3, 8, 8), torch.full((2,), 0.5)
    a, b = padded([4, 2], 5, seed=1), padded([3, 5], 5, seed=2)
    keep, drop = torch.zeros(2, dtype=torch.bool), torch.ones(2, dtype=torch.bool)
    assert not torch.allclose(denoised(task, model, x, t, a, keep), denoised(task, model, x, t, b, keep))
    torch.testing.assert_close(denoised(task, model, x, t, a, drop), denoised(task, model, x, t, b, drop))
    # "No real token" is the same null as "dropped".
    empty = (a[0], torch.zeros_like(a[1]))
    torch.testing.assert_close(denoised(task, model, x, t, empty, keep), denoised(task, model, x, t, a, drop))


@pytest.mark.parametrize("case", ["dropped", "masked"])
def test_fully_dropped_or_masked_context_is_finite_with_finite_gradients(case):
    _, model = make(perturb=True)
    model.train()
    emb, mask = padded([3, 5, 1], 6)
    emb.requires_grad_(True)
    # "masked": no real token and not dropped: the DiT's attention sees an all-False key mask (the
    # task itself would substitute the null; this checks the model path underneath it).
    drop = torch.full((3,), case == "dropped")
    mask = mask if case == "dropped" else torch.zeros_like(mask)
    out = model({STREAM: torch.randn(3, 3, 8, 8)}, {STREAM: torch.rand(3)}, context=emb, context_mask=mask,
                context_drop=drop)[STREAM]
    out.square().mean().backward()
    assert torch.isfinite(out).all()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert torch.isfinite(emb.grad).all()
    if case == "dropped":  # the context itself is not read
        assert (emb.grad == 0).all()


def test_dropout_one_gives_every_parameter_a_gradient():
    """torch.where with a learned null (not skipping the pathway): every parameter, the null context,
    the null label and the cross-attention included, is in the graph in a fully dropped step."""
    task, model = make(num_classes=3, context_dropout=1.0, perturb=False)
    model.train()
    emb, mask = padded([2, 4, 3, 1], 4)
    loss = task.loss_on_batch(torch.rand(4, 3, 8, 8) * 2 - 1, torch.tensor([0, 1, 2, 0]), emb, mask)
    loss.mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert model.null_context.grad is not None and any(b.cross_attn.kv.weight.grad is not None for b in model.blocks)


def spy_on_model(task, model):
    seen = {}
    forward = model.forward

    def spy(x, t, **kwargs):
        seen.update(kwargs)
        return forward(x, t, **kwargs)

    model.forward = spy
    return seen


def test_training_drops_context_and_label_together():
    task, model = make(num_classes=3, label_dropout=0.0, context_dropout=0.5)
    seen = spy_on_model(task, model)
    lengths = [3] * 63 + [0]  # the last row has no real token
    emb, mask = padded(lengths, 4)
    torch.manual_seed(0)
    task.loss_on_batch(torch.zeros(64, 3, 8, 8), torch.zeros(64, dtype=torch.long), emb, mask)
    label_drop, context_drop = seen["label_drop"], seen["context_drop"]
    assert 10 < int(label_drop.sum()) < 54  # about half, drawn per sample
    assert torch.equal(context_drop[:63], label_drop[:63])  # dropped together (the CFG unconditional pass)
    assert context_drop[63]  # no caption: the learned null, whatever the label does


def test_guidance_drops_context_and_label_together():
    task, model = make(num_classes=3)
    seen = spy_on_model(task, model)
    emb, mask = padded([2, 3], 3)
    den = task.denoiser(model, {"labels": torch.tensor([1, 2]), "context": emb, "context_mask": mask})
    drop = torch.tensor([False, False, True, True])  # guidance's (conditional, unconditional) batch
    den({STREAM: torch.randn(4, 3, 8, 8)}, {STREAM: torch.full((4,), 0.5)}, drop)
    assert torch.equal(seen["context_drop"], drop) and torch.equal(seen["label_drop"], drop)
    assert seen["context"].shape == (4, 3, D) and seen["labels"].tolist() == [1, 2, 1, 2]
    with pytest.raises(ValueError, match="pass one"):
        task.batch_conditions(torch.arange(2), {})


def test_batch_gathers_context_rows_of_the_same_images():
    n = 5
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 3, 4, 4).contiguous()
    data = ImageData(images, torch.arange(n) % 2, ["a", "b"], "mem", names=[str(i) for i in range(n)])
    emb, mask = padded([1, 2, 3, 0, 2], 3)
    emb = torch.where(mask[..., None], emb, torch.zeros(()))
    ctx = ContextSet(emb, mask, None, None, "ctx.npz")
    train = ImageTrainData(data, hflip=True, context=ctx).to(torch.device("cpu"))
    assert train.info["context_dim"] == D
    idx = torch.tensor([3, 0, 4, 4])
    batch = train.batch(idx)
    assert torch.equal(batch["context"], emb[idx]) and torch.equal(batch["context_mask"], mask[idx])
    pixel = ((batch["images"][:, 0, 0, 0] + 1) * 127.5).round().long()
    assert pixel.tolist() == idx.tolist()  # the image of each row is the image the context belongs to
    with pytest.raises(ValueError, match="3 rows for 5 images"):
        ImageTrainData(data, hflip=False, context=ContextSet(emb[:3], mask[:3], None, None, "ctx.npz"))


def test_superres_refuses_a_context_path(tmp_path):
    from ditlab.config import load_config
    from ditlab.tasks.registry import build_train_data

    cfg = load_config(None, ["task.kind=superres", f"data.context_path={tmp_path}/c.npz"])
    with pytest.raises(ValueError, match="task.kind=superres does not cross-attend"):
        build_train_data(cfg, progress=False)


def test_cfg_context_on_the_unnamed_set_beside_a_label_is_refused():
    """The unnamed set is dropped only with the label (task.cond_dropout): guiding it alone would run a
    pass training never saw, so --cfg-context context=W is an error; without a label (the set is the only
    condition) it is plain CFG and allowed."""
    from ditlab.generation import check_settings
    from ditlab.tasks.base import SampleSettings

    labelled, _ = make(num_classes=4)
    with pytest.raises(ValueError, match="--cfg-context context=W: .*never trained"):
        check_settings(SampleSettings(cfg_context=(("context", 2.0),)), labelled)
    check_settings(SampleSettings(cfg_context=(("context", 1.0),)), labelled)  # W_i = 1: no such pass
    alone, _ = make(num_classes=0)
    check_settings(SampleSettings(cfg_context=(("context", 2.0),)), alone)


def test_a_context_set_without_padding_reaches_the_model_without_a_mask(monkeypatch):
    """A full-length context file: the batch has no mask key and the cross-attention runs SDPA with no
    attn_mask (its flash kernels), dropped rows included; the loss and the guided denoiser equal the masked
    path's up to rounding (M copies of the null = one null)."""
    n, m = 4, 3
    images = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)
    data = ImageData(images, torch.zeros(n, dtype=torch.long), ["a"], "mem", names=[str(i) for i in range(n)])
    emb, mask = padded([m] * n, m)
    ctx = ContextSet(emb, mask, None, None, "ctx.npz")
    assert ctx.full and not ContextSet(*padded([m, 1, m, m], m), None, None, "p.npz").full
    train = ImageTrainData(data, hflip=False, context=ctx).to(torch.device("cpu"))
    batch = train.batch(torch.arange(n))
    assert "context_mask" not in batch

    import torch.nn.functional as F

    seen = []
    real_sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append((k.shape[-2], attn_mask is None))
        return real_sdpa(q, k, v, attn_mask=attn_mask, **kw)

    task, model = make(context_dropout=0.5, qk_norm=True)
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    drops = []
    monkeypatch.setattr("ditlab.tasks.image.task.context_drop_flags",
                        lambda d, m: drops.append(d if m is None else d | ~m.any(dim=1)) or drops[-1])

    def loss_and_null_grad(**extra):
        model.zero_grad()
        torch.manual_seed(3)
        loss = task.loss_on_batch(**batch, **extra)
        loss.sum().backward()
        return loss.detach(), model.null_context.grad.clone()

    loss_free, grad_free = loss_and_null_grad()
    assert 0 < int(drops[-1].sum()) < n  # some rows dropped, some not
    cross = [free for keys, free in seen if keys == m]
    assert cross and all(cross)  # every cross-attention call unmasked, though rows were dropped
    loss_masked, grad_masked = loss_and_null_grad(context_mask=mask)
    assert torch.allclose(loss_free, loss_masked, rtol=1e-5, atol=1e-6)
    assert grad_free.abs().sum() > 0 and torch.allclose(grad_free, grad_masked, rtol=1e-4, atol=1e-7)

    seen.clear()
    x, t = torch.randn(n, 3, 8, 8), torch.rand(n)
    drop = torch.tensor([True, False, True, False])
    out = denoised(task, model, x, t, (emb, mask), drop)  # sampling: a full mask is dropped too
    assert all(free for keys, free in seen if keys == m)
    xs, ts = {STREAM: x}, {STREAM: t}
    ref = model(xs, ts, context=emb, context_mask=mask, context_drop=drop)  # the one-null-slot path
    ref = task.objective.denoised(ref, xs, ts, task.patch_sizes)[STREAM][0]
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5)
    assert not torch.equal(out[0], denoised(task, model, x, t, (emb, mask), ~drop)[0])  # the drop mattered


def test_named_sets_full_and_padded_side_by_side(monkeypatch):
    """Two named sets, one without padding (no mask key, unmasked SDPA) and one with (masked): the loss equals
    the one with both masks given, up to rounding."""
    from ditlab.models.dit import ContextSpec
    import torch.nn.functional as F

    n = 4
    images = torch.zeros(n, 3, 8, 8, dtype=torch.uint8)
    data = ImageData(images, torch.zeros(n, dtype=torch.long), ["a"], "mem", names=[str(i) for i in range(n)])
    full = ContextSet(*padded([3] * n, 3, seed=1), None, None, "full.npz")
    part = ContextSet(*padded([2, 5, 1, 4], 5, seed=2), None, None, "part.npz")
    train = ImageTrainData(data, hflip=False, named={"full": full, "part": part}).to(torch.device("cpu"))
    batch = train.batch(torch.arange(n))
    assert "context_mask__full" not in batch and torch.equal(batch["context_mask__part"], part.mask)
    torch.manual_seed(0)
    cfg = ModelConfig(arch="DiT-S/2", hidden_size=32, depth=2, num_heads=2, num_classes=0)
    model = build_image_model(cfg, 8, 3, contexts=[ContextSpec("full", D), ContextSpec("part", D)])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    task = ImageTask(model, Objective(FlowSchedule(), "velocity"), context_dropout=0.3,
                     set_dropout={"full": 0.5, "part": 0.5})
    seen = []
    real_sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append((k.shape[-2], attn_mask is None))
        return real_sdpa(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    drops = []
    monkeypatch.setattr("ditlab.tasks.image.task.context_drop_flags",
                        lambda d, m: drops.append(d if m is None else d | ~m.any(dim=1)) or drops[-1])
    torch.manual_seed(7)
    loss = task.loss_on_batch(**batch)
    assert 0 < int(drops[0].sum()) < n  # the full set: some rows dropped, some not
    assert {free for keys, free in seen if keys == 3} == {True} and {free for keys, free in seen if keys == 5} == {False}
    torch.manual_seed(7)
    loss_masked = task.loss_on_batch(**batch, context_mask__full=full.mask)
    assert torch.allclose(loss, loss_masked, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"context_mask__ful\b.*name no context set"):
        task.loss_on_batch(**batch, context_mask__ful=full.mask)  # misspelt: not taken for a set without padding
