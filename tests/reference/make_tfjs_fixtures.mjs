// The TF.js runtime's outputs for tests/reference/tfjs_detectors.npz (run by make_tfjs_fixtures.py).
//
//   node make_tfjs_fixtures.mjs MODELS_DIR WORK_DIR
//
// WORK_DIR/inputs.json lists photos [{name, h, w}], each a raw uint8 RGB file WORK_DIR/<name>.rgb.
// For every photo, each graph runs as @vladmandic/human runs it (src/object/centernet.ts,
// nanodet.ts, src/segmentation/selfie.ts, meet.ts): tf.image.resizeBilinear of the float photo
// (0..255) to the model's input size (alignCorners=false, halfPixelCenters=false), then
//   centernet: the 0..255 image as it is, NHWC;
//   nanodet:   /255, transposed to NCHW;
//   selfie, meet: /255, NHWC.
// NanoDet's final detections are decoded here with TF.js ops as NanoDet does (GFL: softmax over
// the 11 bins of each side, integral times the stride, centres at (i + 0.5) * stride, boxes clipped
// to the input, score > 0.05, per-class NMS at IoU 0.6, 100 kept): an independent reference for
// rajax's decoding. Also written: tf.image.resizeBilinear of a small seeded tensor under the three
// coordinate rules, for the op-level test.
// Every output goes to WORK_DIR/out/<key with / as __>.f32 (raw float32, little endian) with its shape in
// WORK_DIR/out/index.json. Runs on the pure-JS CPU backend (no native download):
//   npm install @tensorflow/tfjs-core@4.22.0 @tensorflow/tfjs-converter@4.22.0 @tensorflow/tfjs-backend-cpu@4.22.0

import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(path.join(process.cwd(), 'package.json'));
const tf = require('@tensorflow/tfjs-core');
require('@tensorflow/tfjs-backend-cpu');
const converter = require('@tensorflow/tfjs-converter');

const [modelsDir, workDir] = process.argv.slice(2);
const outDir = path.join(workDir, 'out');
fs.mkdirSync(outDir, { recursive: true });
const index = {};

function save(key, tensor) {
  const data = tensor.dataSync();
  const f32 = data instanceof Float32Array ? data : Float32Array.from(data);
  fs.writeFileSync(path.join(outDir, `${key.replaceAll("/", "__")}.f32`), Buffer.from(f32.buffer, f32.byteOffset, f32.byteLength));
  index[key] = tensor.shape;
}

async function loadGraph(name) {
  const spec = JSON.parse(fs.readFileSync(path.join(modelsDir, `${name}.json`)));
  const weightSpecs = [];
  const buffers = [];
  for (const group of spec.weightsManifest) {
    weightSpecs.push(...group.weights);
    for (const p of group.paths) buffers.push(fs.readFileSync(path.join(modelsDir, p)));
  }
  const all = Buffer.concat(buffers);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  const handler = { load: async () => ({
    modelTopology: spec.modelTopology, weightSpecs, weightData, format: spec.format,
    generatedBy: spec.generatedBy, convertedBy: spec.convertedBy, signature: spec.signature,
  }) };
  return converter.loadGraphModel(handler);
}

// NanoDet's GFL decoding and per-class NMS for one photo, in TF.js ops.
async function nanodetDetections(outs, inputSize) {
  const levels = [[8, 'Identity:0', 'Identity_3:0'], [16, 'Identity_1:0', 'Identity_4:0'], [32, 'Identity_2:0', 'Identity_5:0']];
  const boxes = [];
  const scores = [];
  for (const [stride, scoreKey, distKey] of levels) {
    const n = Math.ceil(inputSize / stride);
    const ys = tf.mul(tf.add(tf.range(0, n), 0.5), stride);
    const cx = tf.reshape(tf.tile(tf.reshape(ys, [1, n]), [n, 1]), [-1]);
    const cy = tf.reshape(tf.tile(tf.reshape(ys, [n, 1]), [1, n]), [-1]);
    const dist = tf.softmax(tf.reshape(outs[distKey], [n * n, 4, 11]), -1);
    const proj = tf.reshape(tf.range(0, 11), [1, 1, 11]);
    const d = tf.mul(tf.sum(tf.mul(dist, proj), -1), stride);  // [N, 4]: left, top, right, bottom
    const [l, t, r, b] = tf.unstack(d, 1);
    const clip = (v) => tf.clipByValue(v, 0, inputSize);
    boxes.push(tf.stack([clip(tf.sub(cx, l)), clip(tf.sub(cy, t)), clip(tf.add(cx, r)), clip(tf.add(cy, b))], 1));
    scores.push(tf.reshape(outs[scoreKey], [n * n, 80]));
  }
  const allBoxes = tf.concat(boxes, 0);
  const allScores = tf.concat(scores, 0);
  const yxBoxes = tf.gather(allBoxes, [1, 0, 3, 2], 1);
  const rows = [];
  for (let c = 0; c < 80; c++) {
    const s = tf.reshape(tf.slice(allScores, [0, c], [-1, 1]), [-1]);
    const keep = await tf.image.nonMaxSuppressionAsync(yxBoxes, s, 100, 0.6, 0.05);
    const kept = keep.dataSync();
    const sv = s.dataSync();
    const bv = allBoxes.dataSync();
    for (const i of kept) rows.push([bv[4 * i], bv[4 * i + 1], bv[4 * i + 2], bv[4 * i + 3], sv[i], c]);
  }
  rows.sort((a, b) => b[4] - a[4]);
  const top = rows.slice(0, 100);
  while (top.length < 100) top.push([0, 0, 0, 0, 0, -1]);
  return { boxes: allBoxes, detections: tf.tensor2d(top) };
}

async function main() {
  tf.setBackend('cpu');
  await tf.ready();
  const photos = JSON.parse(fs.readFileSync(path.join(workDir, 'inputs.json')));
  const models = {};
  for (const name of ['centernet', 'nanodet', 'selfie', 'meet']) models[name] = await loadGraph(name);
  for (const { name, h, w } of photos) {
    const raw = fs.readFileSync(path.join(workDir, `${name}.rgb`));
    const image = tf.tensor4d(Float32Array.from(raw), [1, h, w, 3]);

    const c = tf.image.resizeBilinear(image, [512, 512]);
    const co = models.centernet.execute(c, ['tower_0/keypoints', 'tower_0/wh', 'tower_0/detections']);
    save(`${name}/centernet/keypoints`, co[0]);
    save(`${name}/centernet/wh`, co[1]);
    save(`${name}/centernet/detections`, co[2]);

    const n = tf.transpose(tf.div(tf.image.resizeBilinear(image, [416, 416], false), 255), [0, 3, 1, 2]);
    const keys = ['Identity:0', 'Identity_1:0', 'Identity_2:0', 'Identity_3:0', 'Identity_4:0', 'Identity_5:0'];
    const no = models.nanodet.execute(n, keys);
    const outs = {};
    keys.forEach((k, i) => { outs[k] = no[i]; save(`${name}/nanodet/${k.replace(':0', '')}`, no[i]); });
    const det = await nanodetDetections(outs, 416);
    save(`${name}/nanodet/boxes`, det.boxes);
    save(`${name}/nanodet/detections`, det.detections);

    for (const [seg, size] of [['selfie', [256, 256]], ['meet', [144, 256]]]) {
      const s = tf.div(tf.image.resizeBilinear(image, size, false), 255);
      save(`${name}/${seg}/mask`, models[seg].execute(s));
    }
    console.log(`${name}: done`);
  }

  // tf.image.resizeBilinear under its three coordinate rules, on a seeded 1x7x9x2 tensor.
  let seed = 12345;
  const rnd = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };
  const small = tf.tensor4d(Float32Array.from({ length: 7 * 9 * 2 }, rnd), [1, 7, 9, 2]);
  save('resize/input', small);
  for (const [h, w] of [[12, 5], [4, 16]]) {
    save(`resize/legacy_${h}x${w}`, tf.image.resizeBilinear(small, [h, w], false, false));
    save(`resize/align_corners_${h}x${w}`, tf.image.resizeBilinear(small, [h, w], true, false));
    save(`resize/half_pixel_${h}x${w}`, tf.image.resizeBilinear(small, [h, w], false, true));
  }
  fs.writeFileSync(path.join(outDir, 'index.json'), JSON.stringify({ shapes: index, tfjs: tf.version_core }));
}

main().catch((e) => { console.error(e); process.exit(1); });
