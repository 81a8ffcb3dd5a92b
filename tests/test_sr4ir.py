"""SR4IR: the CQMix mask, the TDP loss, and one step of S and T in turn on a tiny classifier."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rajax

from rajax import config as config_lib
from rajax import methods, networks, optim
from rajax.methods import sr4ir

FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _config(**method):
  c = config_lib.base(task="sr", method="sr4ir", recognizer="resnet18")
  c.degrade.scale = 2
  c.processor.update(dict(blocks=1, channels=8))
  c.recognizer.update(dict(num_classes=10, width=4))
  c.recognizer.weights = "random"
  c.data.update(dict(source="synthetic", crop=16, resize=0, batch_size=4, eval_batch_size=4))
  c.method.update(method)
  return c


def test_cqmix_mask_is_constant_per_cell_and_half_on_average():
  mask = np.asarray(sr4ir.cqmix_mask(jax.random.key(0), (64, 16, 24, 3), 4))
  assert mask.shape == (64, 16, 24, 1) and set(np.unique(mask)) <= {0.0, 1.0}
  cells = mask[..., 0].reshape(64, 4, 4, 4, 6)
  assert np.all(cells == cells[:, :, :1, :, :1])   # constant inside each 4 x 6 cell
  assert abs(cells[:, :, 0, :, 0].mean() - 0.5) < 0.05
  sr, hr = np.ones((64, 16, 24, 3)), np.zeros((64, 16, 24, 3))
  np.testing.assert_array_equal(sr4ir.cqmix(sr, hr, mask), np.broadcast_to(mask, sr.shape))
  with pytest.raises(ValueError, match="cqmix_cells"):
    sr4ir.cqmix_mask(jax.random.key(0), (1, 10, 10, 3), 4)


def test_tdp_loss_is_the_weighted_mean_absolute_feature_difference():
  rng = np.random.default_rng(0)
  f = {"a": rng.normal(size=(2, 4, 4, 3)), "b": rng.normal(size=(2, 2, 2, 5))}
  g = {"a": rng.normal(size=(2, 4, 4, 3)), "b": rng.normal(size=(2, 2, 2, 5))}
  want = 0.3 * np.abs(f["a"] - g["a"]).mean() + 0.7 * np.abs(f["b"] - g["b"]).mean()
  np.testing.assert_allclose(sr4ir.tdp_loss(f, g, ("a", "b"), (0.3, 0.7)), want, rtol=1e-6)
  with pytest.raises(ValueError, match="tdp_layers"):
    sr4ir.tdp_loss(f, g, ("c",), (1.0,))


def test_bad_settings_are_refused():
  for fields, words in [(dict(cqmix_cells=0), "cqmix_cells"), (dict(warmup_steps=-1), "warmup_steps"),
                        (dict(tdp_layers=("layer4",), tdp_weights=(1.0, 2.0)), "one weight per layer")]:
    with pytest.raises(ValueError, match=words):
      config_lib.validate(_config(**fields))


def test_one_step_gates_tdp_and_trains_t_on_the_new_s():
  c = _config(warmup_steps=1)
  config_lib.validate(c)
  spec = methods.get("sr4ir")
  modules = networks.trained_modules(c, spec)
  opts = optim.make_optimizers(c.optim, spec.trains, 100, 100)
  method = methods.build(methods.Setup(config=c, modules=modules, optimizers=opts,
                                       input_shape=networks.input_shape(c)))
  state = method.init(jax.random.PRNGKey(0), networks.initial_variables(c, spec, modules))
  rng = np.random.default_rng(0)
  batch = {"input": rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8),
           "target": rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8),
           "label": rng.integers(0, 10, (4,)).astype(np.int32)}
  step = jax.jit(method.train_step).lower(state, batch, {}).compile(compiler_options=FAST)
  s1, m1 = step(state, batch, {})
  s2, m2 = step(s1, batch, {})
  assert float(m1["tdp_gate"]) == 0.0 and float(m2["tdp_gate"]) == 1.0
  assert float(m1["tdp"]) > 0
  np.testing.assert_allclose(m1["loss"], m1["pixel_l1"], rtol=1e-6)                 # TDP off in warm-up
  np.testing.assert_allclose(m2["loss"], m2["pixel_l1"] + m2["tdp"], rtol=1e-6)     # and on after it
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params["recognizer"]),
                                                      jax.tree.leaves(s1.params["recognizer"])))
  # T's loss is made on the updated S's outputs: recompute it by hand with S after the step.
  x = jnp.asarray(batch["input"], jnp.float32) / 255
  y = jnp.asarray(batch["target"], jnp.float32) / 255
  sr = modules["processor"].apply({"params": s1.params["processor"], "batch_stats": s1.batch_stats["processor"]}, x,
                                  train=False)
  rec, task = modules["recognizer"], methods.base.task_of(modules["recognizer"])
  per_example, _, _ = task.recognition_loss(rec, sr, batch["label"], variables=state.variables("recognizer"),
                                            train=True)
  np.testing.assert_allclose(m1["recognition_sr"], np.mean(per_example), rtol=1e-4)
  sr_old = modules["processor"].apply(state.variables("processor"), x, train=False)
  stale, _, _ = task.recognition_loss(rec, sr_old, batch["label"], variables=state.variables("recognizer"), train=True)
  assert abs(float(np.mean(stale)) - float(m1["recognition_sr"])) > 1e-6   # negative control: the old S differs


def _built(c, validate=True):
  if validate:
    config_lib.validate(c)
  spec = methods.get(c.method.name)
  modules = networks.trained_modules(c, spec)
  opts = optim.make_optimizers(c.optim, spec.trains, 100, 100)
  method = methods.build(methods.Setup(config=c, modules=modules, optimizers=opts,
                                       input_shape=networks.input_shape(c)))
  state = method.init(jax.random.PRNGKey(0), networks.initial_variables(c, spec, modules))
  frozen = networks.frozen_networks(c, spec)
  step = jax.jit(method.train_step).lower(state, _BATCH, frozen).compile(compiler_options=FAST)
  return modules, state, frozen, step


_rng = np.random.default_rng(1)
_BATCH = {"input": _rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8),
          "target": _rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8),
          "label": _rng.integers(0, 10, (4,)).astype(np.int32)}


def _images():
  return jnp.asarray(_BATCH["input"], jnp.float32) / 255, jnp.asarray(_BATCH["target"], jnp.float32) / 255


def test_the_s_update_gives_t_no_gradient_and_the_t_update_gives_s_none():
  """With S's learning rate 0 (S stays put), switching the TDP term on (a step past the warm-up)
  changes S's gradient but leaves T's update bit for bit the same: T learns from its own loss only.
  S's gradient is that of L1 + TDP alone, recomputed with T frozen at its starting weights."""
  c = _config(warmup_steps=1)
  config_lib.validate(c)
  c.optim.processor.lr = 0.0   # (the config refuses a zero rate: a run would train nothing)
  modules, state, frozen, step = _built(c, validate=False)
  off, m_off = step(state, _BATCH, frozen)
  on, m_on = step(state.replace(step=jnp.ones_like(state.step)), _BATCH, frozen)
  assert float(m_off["tdp_gate"]) == 0.0 and float(m_on["tdp_gate"]) == 1.0
  assert abs(float(m_on["grad_norm"]) - float(m_off["grad_norm"])) > 1e-3 * float(m_off["grad_norm"])
  for a, b in zip(jax.tree.leaves(off.params["recognizer"]), jax.tree.leaves(on.params["recognizer"])):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params["recognizer"]),
                                                      jax.tree.leaves(on.params["recognizer"])))
  x, y = _images()
  rec, task = modules["recognizer"], methods.base.task_of(modules["recognizer"])
  t = rec.replace(variables=state.variables("recognizer"))

  def s_loss(p):
    sr, _ = modules["processor"].apply({"params": p, "batch_stats": state.batch_stats["processor"]}, x, train=True,
                                       mutable=["batch_stats"])
    f_sr, f_hr = task.features(t, sr)[1], task.features(t, y)[1]
    return jnp.mean(jnp.abs(sr - y)) + jnp.mean(jnp.abs(f_sr["layer4"] - f_hr["layer4"]))

  g = jax.grad(s_loss)(state.params["processor"])
  np.testing.assert_allclose(float(m_on["grad_norm"]), float(optax_norm(g)), rtol=1e-4)


def optax_norm(tree):
  return np.sqrt(sum(float(np.sum(np.square(np.asarray(v, np.float64)))) for v in jax.tree.leaves(tree)))


def _ce(logits, labels):
  logits = np.asarray(logits, np.float64)
  logp = logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1, keepdims=True)) - \
      logits.max(-1, keepdims=True)
  return float(-np.mean(logp[np.arange(len(labels)), labels]))


@pytest.mark.parametrize("name", ["sr4ir_t_then_s", "sr4ir_joint"])
def test_baselines_train_on_l1_plus_the_task_loss_at_weight_one(name):
  """T->S (T frozen, inference mode) and S+T (T in training mode, one backward pass into both): the
  loss is L1(S(x), y) + 1.0 * CE(T(S(x))), recomputed here from S's output and T's logits."""
  c = _config()
  c.method = config_lib.ml_collections.ConfigDict(dict(name=name, **methods.get(name).defaults()))
  modules, state, frozen, step = _built(c)
  new, m = step(state, _BATCH, frozen)
  x, y = _images()
  p_vars = state.variables("processor")
  sr, _ = modules["processor"].apply(p_vars, x, train=True, mutable=["batch_stats"])
  l1 = float(np.mean(np.abs(np.asarray(sr, np.float64) - np.asarray(y, np.float64))))
  if name == "sr4ir_t_then_s":
    logits = frozen["recognizer"](sr)
    assert set(state.params) == {"processor"}
  else:
    rec = modules["recognizer"]
    logits, _ = rec.apply_train(state.variables("recognizer"), sr)
    assert float(m["grad_norm_recognizer"]) > 0
  ce = _ce(logits, _BATCH["label"])
  np.testing.assert_allclose(float(m["pixel_l1"]), l1, rtol=1e-5)
  np.testing.assert_allclose(float(m["recognition"]), ce, rtol=1e-4)
  np.testing.assert_allclose(float(m["loss"]), l1 + ce, rtol=1e-4)
  assert "pixel_mse" not in m


def test_warm_up_in_epochs_counts_the_trainers_steps():
  c = _config(warmup_epochs=2.5)
  config_lib.validate(c)
  assert sr4ir.warmup_steps(c, steps_per_epoch=4) == 10
  assert sr4ir.warmup_steps(_config(warmup_steps=7), steps_per_epoch=4) == 7
  with pytest.raises(ValueError, match="steps per epoch"):
    sr4ir.warmup_steps(c, steps_per_epoch=None)
  with pytest.raises(ValueError, match="both warmup_steps and warmup_epochs"):
    config_lib.validate(_config(warmup_epochs=1.0, warmup_steps=3))


# det builds Faster R-CNN MobileNetV3 (18 s here): -m heavy; its FPN levels are tested in test_faster_rcnn_mobilenet.py.
@pytest.mark.parametrize("task", ["cls", "seg", pytest.param("det", marks=pytest.mark.heavy)])
def test_official_settings_validate_and_name_features_the_task_network_has(task):
  """configs/sr4ir.py: every row's config validates; SR4IR's schedules, kernel and CQMix grid; and the
  task network (random weights) exposes the TDP features SR4IR compares (C5; FPN '0', '1'; layer4)."""
  import pathlib
  root = pathlib.Path(__file__).resolve().parents[1] / "configs" / "sr4ir.py"
  for mode in ("recognizer_on_clean", "recognizer_on_input", "plain", "sr4ir_s_then_t", "sr4ir_t_then_s",
               "sr4ir_joint", "sr4ir"):
    c = config_lib.load(f"{root}:task={task},mode={mode}")
    if "processor_weights" in c.method:
      c.method.processor_weights = "plain/processor.msgpack"
    config_lib.validate(c)
  c = config_lib.load(f"{root}:task={task},mode=sr4ir")
  warmup, epochs = {"cls": (20, 200), "seg": (10, 100), "det": (3, 30)}[task]
  assert c.degrade.kernel == "torch" and c.processor.name == "edsr" and c.num_epochs == epochs
  assert c.method.warmup_epochs == warmup and c.method.cqmix_cells == (4 if task == "cls" else 8)
  p, r = c.optim.processor, c.optim.recognizer
  assert (p.name, p.lr, p.schedule, tuple(p.restart_epochs), p.min_lr) == (
      "adamw", 1e-4, "cosine_restarts", (warmup, epochs - warmup), 1e-6)
  assert (r.name, r.schedule, r.min_lr) == ("sgd", "cosine_restarts", 1e-4)
  assert (tuple(map(tuple, r.lr_scale)) == (("aux_classifier", 10.0),)) == (task == "seg")
  c.recognizer.weights = "random"
  rec = networks.module(c, "recognizer")
  task_lib = methods.base.task_of(rec)
  layers, _ = sr4ir._tdp_settings(c, task_lib)
  feats = jax.eval_shape(lambda r, x: task_lib.features(r, x)[1], rec, jnp.zeros((1, 64, 64, 3)))
  assert set(layers) <= set(feats), (layers, sorted(feats))


def test_sr4ir_table_reads_each_row_by_its_own_task_network(tmp_path):
  """configs/eval/sr4ir.py (cls) on three finished rows of tiny networks: the HR run's T, SR4IR's trained
  T and T->S's fixed T (the HR run's file) each read their own row; the sr row is read by the HR T."""
  import pathlib
  from rajax import evaluate, runs as runs_lib
  from rajax import weights as weights_lib
  root = pathlib.Path(__file__).resolve().parents[1] / "configs"
  rows = {"hr": "recognizer_on_clean", "sr": "plain", "t_then_s": "sr4ir_t_then_s", "sr4ir": "sr4ir"}
  for i, (row, mode) in enumerate(rows.items()):
    c = config_lib.load(f"{root / 'sr4ir.py'}:task=cls,mode={mode}")
    c.processor.update(dict(blocks=1, channels=8))
    c.recognizer.update(dict(num_classes=10, width=4, weights="random"))
    c.data.crop, c.data.resize = 16, 0
    if row == "t_then_s":
      c.recognizer.weights = str(tmp_path / "hr" / "recognizer.msgpack")
    work = tmp_path / row
    work.mkdir()
    (work / "config.json").write_text(c.to_json_best_effort(indent=2))
    p = networks.module(c, "processor")
    weights_lib.save(work / "processor.msgpack", jax.device_get(
        p.init(jax.random.key(i), jnp.zeros((1, 4, 4, 3)), train=False)))
    if "recognizer" in methods.get(mode).trains:   # the trained T: a seeded random ResNet-18 of width 4
      t = rajax.recognizer("resnet18", "random", num_classes=10, width=4, seed=10 + i)
      weights_lib.save(work / "recognizer.msgpack", jax.device_get(dict(t.variables)))
  e = config_lib.load(f"{root / 'eval' / 'sr4ir.py'}:task=cls,runs={tmp_path},rows={','.join(rows)}")
  e.data.update(dict(source="synthetic", crop=16, resize=0))
  e.data.synthetic.update(dict(eval_size=8, image_size=16, num_classes=10))
  e.batch_size, e.labels = 8, "recognizer"
  table = evaluate.run(e, tmp_path / "eval")["sr4ir"]
  own = {r["processor"]: r["own R"] for r in table.rows}
  assert own == {"hr": "trained", "sr": "t_hr (fixed)", "t_then_s": "its fixed loss R (a weights file)",
                 "sr4ir": "trained"}
  t_then_s = runs_lib.load(tmp_path / "t_then_s")
  hr = runs_lib.load(tmp_path / "hr")
  for a, b in zip(jax.tree.leaves(networks.frozen_networks(t_then_s.config, t_then_s.spec)["recognizer"].variables),
                  jax.tree.leaves(hr.variables["recognizer"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_seg_and_det_tables_gather_each_rows_own_task_network():
  """The README's form for seg/det: an "own" column per metric, each row's cell from its own T's column."""
  from rajax.evaluate.report import Table, own_columns
  root = pathlib.Path(__file__).resolve().parent.parent / "configs"
  for task, metric in (("seg", "mIoU"), ("det", "mAP")):
    e = config_lib.load(f"{root / 'eval' / 'sr4ir.py'}:task={task},runs=/nowhere")
    own = dict(e.evals.sr4ir.own)
    assert own == {"hr": "T_hr", "lr": "T_lr", "sr": "T_hr", "s_then_t": "T_s_then_t", "t_then_s": "T_hr",
                   "joint": "T_joint", "sr4ir": "T_sr4ir", "clean": "T_hr"}, task
    assert (e.lpips.net, e.lpips.backbone) == ("alex", ""), "no LPIPS column unless a backbone file is given"
    e = config_lib.load(f"{root / 'eval' / 'sr4ir.py'}:task={task},runs=/nowhere,lpips=/w/alexnet-owt-7be5be79.pth")
    assert (e.lpips.net, e.lpips.backbone) == ("alex", "/w/alexnet-owt-7be5be79.pth"), task
  table = Table("t", "t", ["processing", "loss model", "T_hr mIoU", "T_sr4ir mIoU"], {"T_hr mIoU": "pct"})
  table.rows = [{"view": "sr", "T_hr mIoU": 0.5, "T_sr4ir mIoU": 0.1}, {"view": "sr4ir", "T_hr mIoU": 0.2,
                                                                      "T_sr4ir mIoU": 0.6}, {"view": "input"}]
  own_columns(table, {"sr": "T_hr", "sr4ir": "T_sr4ir"}, ("mIoU",), where="evals.x.own")
  assert table.columns == ["processing", "loss model", "own mIoU", "T_hr mIoU", "T_sr4ir mIoU"]
  assert [r.get("own mIoU") for r in table.rows] == [0.5, 0.6, None]
  assert table.formats["own mIoU"] == "pct"
  with pytest.raises(ValueError, match="rows \\['joint'\\]"):
    own_columns(table, {"joint": "T_joint"}, ("mIoU",), where="evals.x.own")
  with pytest.raises(ValueError, match="'T_lr', which is not a column"):
    own_columns(table, {"sr": "T_lr"}, ("mIoU",), where="evals.x.own")
