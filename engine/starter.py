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
  detector: {{arch: dbnet, backbone: mobilenetv3, input_size: 640, train_size: 384, init: base}}
  recognizer: {{arch: crnn, sequence: conv, height: 32, max_width: 320, init: base}}  # conv: all-int8 on devices

train:
  epochs: 20                           # shared; override per model below
  lr: 2.0e-4
  detector: {{batch_size: 8}}
  recognizer: {{batch_size: 32}}

optimize:
  prune: {{amount: 0.3, finetune_epochs: 5}}   # structured channel pruning; 0 = off
  calibration: {{method: minmax, samples: 64}} # int8 calibration on real training images

targets: [local-cpu]                   # `recipe targets` lists the profiles
# deploy:
#   rpi4: {{hosts: [pi@plate-reader-01]}}

verify:
  min_line_accuracy: 0.9
  max_latency_ms: 2000
"""


def starter_recipe(name: str, schema: str = "https://example.invalid/recipe.schema.json") -> str:
    return TEMPLATE.format(name=name, schema=schema)
