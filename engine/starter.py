"""The commented starter recipe written by ``recipe init NAME``."""

from __future__ import annotations

TEMPLATE = """\
# yaml-language-server: $schema={schema}
# {name}: an OCR recipe. Validate with `recipe validate {name}.yaml`,
# see what would run with `recipe plan {name}.yaml`, run with `recipe run {name}.yaml`.
name: {name}

dataset:
  # Your own labelled photos: icdar2015 | labelimg | ppocrlabel | labelstudio | lines
  # format: icdar2015
  # train: data/{name}/train
  # val: data/{name}/val              # omit to split train by a seeded hash (val_fraction)
  # Or generate realistic training data (no labelling needed to get started):
  synthetic: {{style: nameplate, count: 400, val_count: 50, seed: 0}}
  charset: "0-9A-Za-z -:./%()#+,"      # ranges allowed; '-' literal at the edges
  on_unknown_char: error               # error | skip | replace

models:
  # PP-OCRv6 small, pretrained (weights from the installed rapidocr wheel), fine-tuned on your data.
  # For the smallest models: {{arch: dbnet, backbone: mobilenetv3}} / {{arch: crnn, sequence: conv}}.
  # gap_weight: teach the detector to split neighbouring texts your labels box apart (0 = off).
  detector: {{arch: ppocrv6, input_size: 512, train_size: 384, init: base, gap_weight: 10}}
  recognizer: {{arch: ppocrv6, height: 32, max_width: 640, init: base}}
  postprocess: {{thresh: 0.3, box_thresh: 0.6, unclip_ratio: 1.5}}
  # Read with a character n-gram of your labels (their keys, units, formats) in a CTC beam search;
  # contexts it never saw leave the recognizer's reading alone. greedy: without it. split_lines: a
  # box read as words your labels keep as lines of their own (20+ times; marks like `CE UL`) is split,
  # and any box breaks where your labels always begin or end a line (`... m3/min | MFD: 2000/04`).
  # join_lines: a box and the next along its line become one line when they read as a label of yours
  # (5+ times) or your labels put no break between their words (`WEIMAG | GMBH`).
  decoder: {{type: lm, split_lines: 20, join_lines: 5}}

train:
  epochs: 2                            # 0 ships the pretrained models as they are (zero-shot)
  warmup_epochs: 0.1
  # backbone_lr: the backbone's lr as a fraction of lr (0 freezes it)
  detector: {{batch_size: 8, lr: 2.0e-4, backbone_lr: 0.1}}
  recognizer: {{batch_size: 16, lr: 5.0e-4, backbone_lr: 0.05}}

optimize:
  # prune: {{amount: 0.3, finetune_epochs: 5}}  # structured channel pruning; cost PP-OCRv6 7 points of hmean here
  quantize: {{reduce_range: true, qat: {{models: [recognizer]}}}}  # short int8-aware fine-tune
  calibration: {{method: minmax, samples: 64, recognizer: {{method: percentile, percentile: 99.99}}}}

targets: [local-cpu]                   # `recipe targets` lists the profiles
# deploy:
#   rpi4: {{hosts: [pi@plate-reader-01]}}

verify:
  min_line_accuracy: 0.9
  max_latency_ms: 2000
"""


def starter_recipe(name: str, schema: str = "https://example.invalid/recipe.schema.json") -> str:
    return TEMPLATE.format(name=name, schema=schema)
