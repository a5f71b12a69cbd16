"""The tiny preset on CPU: finite losses that reach the right parameters, exact resume, NaN stop, stage 2
freezing, pose self-learning."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from tests.train.conftest import tiny_cfg
from train import checkpoint as ck
from train.loop import prepare, train, train_step


def _stats(run_dir):
    return [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()
            if '"D/total"' in line]


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_tiny_steps_are_finite_and_update_what_they_should(dataset_root, face_recon_ckpt, tmp_path, dataset_reader):
    cfg = tiny_cfg(dataset_root, tmp_path, face_recon_ckpt, steps=2)
    st, ctx = prepare(cfg)
    before_g = {name: [p.detach().clone() for p in ps] for name, ps in st.G.param_groups().items()}
    before_d = {name: _snapshot(st.D[name]) for name in st.D}
    recon_before = _snapshot(ctx.recon)
    out = {}
    for _ in range(2):
        out.update(train_step(st, ctx))
    for key in ("D/whole/adv", "D/face/adv", "D/torso/adv", "D/whole/r1", "G/whole/adv", "G/face/adv",
                "G/torso/adv", "G/landmark", "G/imitation", "G/smooth_expression", "G/minimal_deformation",
                "G/smooth_pose", "G/camera", "G/pose"):
        assert key in out and torch.isfinite(torch.tensor(out[key])), key
    for name, ps in st.G.param_groups().items():
        if name.startswith("superres"):  # stage 1 does not render through super-resolution
            continue
        changed = any(not torch.equal(a, b) for a, b in zip(before_g[name], ps))
        assert changed, f"stage 1 did not update generator group {name!r}"
    for name in st.D:
        assert any(not torch.equal(before_d[name][k], v) for k, v in st.D[name].named_parameters()), name
    assert all(torch.equal(recon_before[k], v) for k, v in ctx.recon.named_parameters()), "face recon must be frozen"
    # the EMA moved towards G
    assert any(not torch.equal(a, b) for a, b in zip(st.G_ema.parameters(), st.G.parameters()))
    ctx.logger.close()


def test_resume_reproduces_the_uninterrupted_run(dataset_root, face_recon_ckpt, tmp_path, dataset_reader):
    base = tiny_cfg(dataset_root, tmp_path / "a", face_recon_ckpt, steps=4, log_every=1, ckpt_every=2,
                    image_every=0, eval_images=0)
    assert train(base) == 0
    full = _stats(next((tmp_path / "a").iterdir()))
    short = replace(base, run=replace(base.run, out=str(tmp_path / "b"), steps=2))
    assert train(short) == 0
    assert train(replace(short, run=replace(short.run, steps=4)), resume="auto") == 0
    run_b = next((tmp_path / "b").iterdir())
    resumed = _stats(run_b)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(full[2:], resumed[2:]):
        for k, v in a.items():
            if k.startswith(("D/", "G/")):
                assert v == b[k], (a["step"], k, v, b[k])
    # the exported EMA generator loads with portrait_core alone
    from portrait_core.generator import load_generator

    G = load_generator(ck.latest_checkpoint(run_b / "checkpoints") / ck.GENERATOR_FILE)
    assert G.checkpoint_info["step"] == 4


def test_injected_nan_stops_cleanly_and_keeps_the_last_checkpoint(dataset_root, face_recon_ckpt, tmp_path,
                                                                  dataset_reader, monkeypatch, capsys):
    monkeypatch.setenv("BUSTO_INJECT_NAN", "2:G/landmark")
    cfg = tiny_cfg(dataset_root, tmp_path, face_recon_ckpt, steps=4, ckpt_every=2, image_every=0, eval_images=0)
    assert train(cfg) == 1
    run = next(tmp_path.iterdir())
    log = (run / "log.txt").read_text()
    assert "non-finite loss 'G/landmark' at step 2" in log
    latest = ck.latest_checkpoint(run / "checkpoints")
    assert latest.name == "step-00000002"
    assert ck.load_state(latest)["step"] == 2


def test_stage2_trains_only_super_resolution(dataset_root, face_recon_ckpt, tmp_path, dataset_reader):
    s1 = tiny_cfg(dataset_root, tmp_path / "s1", face_recon_ckpt, steps=1, ckpt_every=1, image_every=0,
                  eval_images=0)
    assert train(s1) == 0
    run1 = next((tmp_path / "s1").iterdir())
    cfg = replace(s1, stage=2, data=replace(s1.data, resolution=64, face_resolution=64),
                  model=replace(s1.model, init_from=str(run1)),
                  run=replace(s1.run, out=str(tmp_path / "s2"), steps=2))
    st, ctx = prepare(cfg)
    groups = {k: [p.detach().clone() for p in v] for k, v in st.G.param_groups().items()}
    out = {}
    for _ in range(2):
        out = train_step(st, ctx)
    assert torch.isfinite(torch.tensor(out["G/consistency"]))
    for name, ps in st.G.param_groups().items():
        changed = any(not torch.equal(a, b) for a, b in zip(groups[name], ps))
        if name in ("superres", "superres_mapping"):
            assert changed, name
        else:
            assert not changed, f"stage 2 changed frozen group {name!r}"
            assert all(p.grad is None for p in ps), name
    ctx.logger.close()


def test_pose_self_learning_step(dataset_root, face_recon_ckpt, tmp_path, dataset_reader):
    cfg = tiny_cfg(dataset_root, tmp_path, face_recon_ckpt, steps=1)
    cfg = replace(cfg, pose=replace(cfg.pose, enabled=True, full_yaw=True))
    st, ctx = prepare(cfg)
    before = _snapshot(st.pose_branch)
    out = train_step(st, ctx)
    assert out["G/pose_prior_weight"] == 0.5 and "D/whole/pose" in out and "G/pose" not in out
    assert any(not torch.equal(before[k], v) for k, v in st.pose_branch.named_parameters())
    ctx.logger.close()


@pytest.mark.parametrize("bad", ["data.resolution=64"])
def test_resolution_mismatch_is_a_clear_error(dataset_root, face_recon_ckpt, tmp_path, dataset_reader, bad):
    from train.config import parse_overrides

    cfg = parse_overrides(tiny_cfg(dataset_root, tmp_path, face_recon_ckpt), [bad])
    with pytest.raises(ValueError, match="must equal the generator's ray resolution 32"):
        prepare(cfg)


def test_each_loss_reaches_the_parameters_it_should(dataset_root, face_recon_ckpt, tmp_path, dataset_reader):
    from train.data import sample_fake_inputs
    from train.objectives import AdversarialObjective, render_fakes

    objective = AdversarialObjective()

    cfg = tiny_cfg(dataset_root, tmp_path, face_recon_ckpt, steps=1)
    cfg = replace(cfg, model=replace(cfg.model, generator_overrides='{"expression": {"shading": true}}'))
    st, ctx = prepare(cfg)
    # the expression and shading heads start at zero (identity deformation, no shading), which blocks gradients
    # to the deformation's mapping network at step 0 only; give them the small weights they have after a few steps
    with torch.no_grad():
        torch.nn.init.normal_(st.G.expression_deform.head.weight, std=1e-3)
        torch.nn.init.normal_(st.G.expression_deform.shading_head.weight, std=1e-3)
    inputs = sample_fake_inputs(ctx.table, 2, torch.Generator().manual_seed(0), mirror=False)
    fakes = render_fakes(st, ctx, inputs)
    losses = objective.g_losses(st, ctx, fakes)
    groups = st.G.param_groups()

    def reached(loss, params):
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return any(g is not None and g.abs().sum() > 0 for g in grads)

    expect = {  # loss -> (groups it must reach, groups it must not reach)
        "G/imitation": ({"deform", "mapping"}, {"radiance", "manifold", "smoother"}),
        "G/smooth_expression": ({"deform", "mapping"}, {"radiance", "manifold"}),
        "G/minimal_deformation": ({"deform", "mapping"}, {"radiance", "manifold", "smoother"}),
        "G/shading": ({"deform", "mapping"}, {"radiance", "manifold", "smoother"}),
        "G/smooth_pose": ({"smoother"}, {"radiance", "deform"}),
        "G/landmark": ({"radiance", "manifold"}, set()),
        "G/face/adv": ({"radiance", "manifold", "smoother"}, set()),
        "G/whole/adv": ({"radiance", "manifold"}, set()),
        "G/torso/adv": ({"radiance"}, set()),
    }
    for name, (yes, no) in expect.items():
        for g in yes:
            assert reached(losses[name], groups[g]), f"{name} does not reach {g}"
        for g in no:
            assert not reached(losses[name], groups[g]), f"{name} reaches {g}"
    assert not any(p.requires_grad for p in ctx.recon.parameters())
    st.D.requires_grad_(True)
    reals = {k: v for k, v in ctx.stream.next().items()}
    dl = objective.d_losses(st, ctx, reals, fakes, do_r1=True)
    for name in ("whole", "face", "torso"):
        assert reached(dl[f"D/{name}/r1"], list(st.D[name].parameters()))
        others = [p for k in st.D if k != name for p in st.D[k].parameters()]
        assert not reached(dl[f"D/{name}/adv"], others)
    ctx.logger.close()


def test_stage1_fine_tunes_an_appearance_code_generator(dataset_root, face_recon_ckpt, tmp_path, dataset_reader):
    """model.init_from in stage 1: the run starts from the given generator's weights and settings (with overrides),
    draws its noise from the generator's appearance samplers, and its checkpoints keep the appearance contract."""
    from portrait_core.assets import DefaultSamplers
    from portrait_core.generator import Generator, generator_config, save_generator
    from train.data import sample_fake_inputs, uses_appearance_codes

    torch.manual_seed(3)
    src = Generator(generator_config("tiny", manifold={"levels": 5}))
    init = tmp_path / "init"
    init.mkdir()
    save_generator(init / "generator.safetensors", src, info={"noise_latent": {"kind": "appearance_code"}})
    g = torch.Generator().manual_seed(0)
    appearance = torch.rand(4, 80, generator=g)
    DefaultSamplers(identity=torch.randn(4, 80, generator=g), body_shape=torch.zeros(4, 10), appearance=appearance,
                    camera=torch.zeros(2, 25), pose=torch.zeros(2, 6, 3),
                    expression=torch.zeros(2, 64)).save(init / "samplers.safetensors")
    base = tiny_cfg(dataset_root, tmp_path / "ft", face_recon_ckpt, steps=1, ckpt_every=1, image_every=0,
                    eval_images=0)
    cfg = replace(base, model=replace(base.model, init_from=str(init / "generator.safetensors"),
                                      generator_overrides='{"manifold": {"levels": 7}}'))
    st, ctx = prepare(cfg)
    assert st.G.cfg.manifold.levels == 7 and uses_appearance_codes(st.G)
    for k, v in src.state_dict().items():
        torch.testing.assert_close(st.G.state_dict()[k], v, msg=k)
    torch.testing.assert_close(ctx.table.noise, appearance)
    inp = sample_fake_inputs(ctx.table, 6, torch.Generator().manual_seed(1), mirror=False)
    assert all(bool((appearance == row).all(-1).any()) for row in inp.noise)
    ctx.logger.close()
    assert train(cfg) == 0
    run = next(p for p in (tmp_path / "ft").iterdir() if p.is_dir())
    assert (run / "samplers.safetensors").is_file()
    from train.gen import load_generator

    G = load_generator(ck.resolve(run) / ck.GENERATOR_FILE)
    assert uses_appearance_codes(G) and G.cfg.manifold.levels == 7


def test_resume_keeps_the_stored_run_length_unless_the_command_line_sets_it():
    """`python -m train warm128 threads=2 --resume RUN` once replaced a 300-step run's length (and its cosine
    schedule) by the preset's 4,500 steps; only the keys given on the command line change now."""
    from train.config import parse_overrides, preset
    from train.loop import _merge_resume_config

    stored = parse_overrides(preset("warm128"), ["run.steps=300", "run.minutes=18", "data.root=/data/one"])
    cli = parse_overrides(preset("warm128"), ["threads=1", "run.minutes=0"])
    merged = _merge_resume_config(stored, cli, {"threads", "run.minutes"})
    assert (merged.run.steps, merged.run.minutes, merged.threads, merged.data.root) == (300, 0.0, 1, "/data/one")
    merged = _merge_resume_config(stored, parse_overrides(cli, ["run.steps=600"]), {"run.steps"})
    assert merged.run.steps == 600 and merged.run.minutes == 18
    # no record of the command line: the values that differ from the preset count as given
    merged = _merge_resume_config(stored, cli)
    assert (merged.run.steps, merged.run.minutes, merged.threads) == (300, 18.0, 1)  # minutes=0 is the preset's
