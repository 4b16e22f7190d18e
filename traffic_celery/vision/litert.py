"""A YOLOv8-style LiteRT (.tflite) detection model run at any input size, so a small crop costs little.

Why: an exported .tflite model has a fixed input (640x640 for the offline model) because the exporter bakes the
anchor grid and the upsampling sizes into the graph as constants, and ultralytics then runs every image at that
size: a 100x200 px crop of a moving person costs as much as a whole frame. This module rewrites the graph once, in
memory, when the model loads (the file is not touched):

- the head is cut after its three per-level convolutions, whose outputs (NHWC `[1, h/s, w/s, 4*16 + classes]`,
  strides s = 8, 16, 32: the box distributions and the class logits) become the graph's outputs; the anchors,
  the distribution focal loss (DFL) decoding and the sigmoid are done here in numpy, only for the cells above the
  confidence threshold, then a class-aware NMS (OpenCV's `NMSBoxesBatched`, IoU 0.7, 300 boxes at most:
  ultralytics' defaults);
- the sizes of the upsampling layers become inputs set at every call, so the input can be resized to any multiple
  of 32 (XNNPack runs everything else).

An image is letterboxed to `imgsz` on its longer side, keeping its aspect ratio, and padded (grey 114, right and
bottom) to a multiple of 32: a 768x576 frame runs at 640x480, a 150x200 crop at 128x160 with the same scale.
Measured on one core here: 640x640 38 ms, 640x480 29 ms, 320x320 9.6 ms, 160x160 2.8 ms, 96x96 1.0 ms, and a change
of input size (re-planning the arena) 0.3-5 ms. At a 640x640 letterbox the boxes equal ultralytics' own (339 of 339
at IoU >= 0.9 on 40 frames of the sample video).

:func:`load` checks the rewritten graph against the original one (every anchor's box and class scores, on one
image at the original size) and returns None, so the detector keeps ultralytics at the model's fixed size, for a
graph it does not recognise or that does not reproduce the original.
"""

from __future__ import annotations

import collections
import logging
import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

logger = logging.getLogger(__name__)

REG_MAX = 16  # DFL bins per box side (YOLOv8)
STRIDE = 32  # the input's sides are multiples of the largest stride
NMS_IOU = 0.7
MAX_DET = 300
PAD_VALUE = 114
INTERPRETERS = 32  # input shapes kept planned by default (TC_YOLO_INTERPRETERS): see AnySizeModel

FloatArray = NDArray[np.float32]


class UnsupportedGraph(ValueError):
    """The .tflite graph is not the YOLOv8 detection layout this module rewrites."""


@dataclass(frozen=True)
class Prediction:
    """Boxes of one image in its own pixels: `xyxy` (n, 4), `conf` (n,), `cls` (n,) model class ids."""

    xyxy: FloatArray
    conf: FloatArray
    cls: FloatArray

    @staticmethod
    def empty() -> Prediction:
        return Prediction(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32))

    def __len__(self) -> int:
        return len(self.conf)

    def __getitem__(self, index: Any) -> Prediction:  # a mask or indexes: what ultralytics' trackers slice with
        return Prediction(self.xyxy[index], self.conf[index], self.cls[index])

    @property
    def xywh(self) -> FloatArray:
        """Centre x, centre y, width, height (what ByteTrack reads)."""
        wh = self.xyxy[:, 2:] - self.xyxy[:, :2]
        return np.concatenate([self.xyxy[:, :2] + wh / 2, wh], axis=1)

    @staticmethod
    def concat(parts: list[Prediction]) -> Prediction:
        if not parts:
            return Prediction.empty()
        return Prediction(np.concatenate([p.xyxy for p in parts]).astype(np.float32),
                          np.concatenate([p.conf for p in parts]).astype(np.float32),
                          np.concatenate([p.cls for p in parts]).astype(np.float32))


class _Runner:
    """One interpreter of the rewritten model, planned for one input shape at a time."""

    def __init__(self, content: bytes, strides: list[int], num_threads: int):
        from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

        self._interpreter = Interpreter(model_content=content, num_threads=num_threads)
        details = self._interpreter.get_input_details()
        self._image_index = int(details[0]["index"])
        self._size_indexes = [int(d["index"]) for d in details[1:]]
        self._outputs = [int(d["index"]) for d in self._interpreter.get_output_details()]
        self._strides = strides
        self._sizes: list[NDArray[np.int32]] = []

    def reshape(self, shape: tuple[int, int]) -> None:
        h, w = shape
        self._interpreter.resize_tensor_input(self._image_index, [1, h, w, 3])
        self._interpreter.allocate_tensors()
        self._sizes = [np.array([h // s, w // s], dtype=np.int32) for s in self._strides]

    def run(self, image: FloatArray) -> list[FloatArray]:
        for index, size in zip(self._size_indexes, self._sizes, strict=True):
            self._interpreter.set_tensor(index, size)
        self._interpreter.set_tensor(self._image_index, image)
        self._interpreter.invoke()
        return [self._interpreter.get_tensor(i) for i in self._outputs]


def _rewrite(model_bytes: bytes) -> tuple[bytes, list[int], int]:
    """The graph cut after the per-level head convolutions, with the upsampling sizes as inputs.

    Returns the new model, the stride of each resize input (in input order after the image), and the classes."""
    import flatbuffers  # noqa: PLC0415  (only where detection runs)
    from ai_edge_litert import schema_py_generated as schema  # noqa: PLC0415

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model_bytes, 0))
    if len(model.subgraphs) != 1:
        raise UnsupportedGraph("expected one subgraph")
    graph = model.subgraphs[0]
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise UnsupportedGraph("expected one input and one output")
    image = graph.tensors[int(graph.inputs[0])]
    out_shape = [int(v) for v in graph.tensors[int(graph.outputs[0])].shape]
    in_shape = [int(v) for v in image.shape]
    if len(in_shape) != 4 or in_shape[3] != 3 or image.type != schema.TensorType.FLOAT32:
        raise UnsupportedGraph(f"expected a float NHWC image input, got {in_shape}")
    if len(out_shape) != 3 or out_shape[1] <= 4:
        raise UnsupportedGraph(f"expected a [1, 4 + classes, anchors] output, got {out_shape}")
    classes = out_shape[1] - 4
    channels = 4 * REG_MAX + classes
    input_h = in_shape[1]

    def code(op: Any) -> int:
        opcode = model.operatorCodes[op.opcodeIndex]
        return int(max(opcode.builtinCode, opcode.deprecatedBuiltinCode))

    levels = [int(op.outputs[0]) for op in graph.operators
              if code(op) == schema.BuiltinOperator.CONCATENATION
              and len(graph.tensors[int(op.outputs[0])].shape) == 4
              and int(graph.tensors[int(op.outputs[0])].shape[3]) == channels]
    if len(levels) != 3:
        raise UnsupportedGraph(f"expected 3 head levels of {channels} channels, found {len(levels)}")
    needed, kept = set(levels), []
    for index in range(len(graph.operators) - 1, -1, -1):  # operators are in execution order
        op = graph.operators[index]
        if any(int(t) in needed for t in op.outputs):
            kept.append(index)
            needed.update(int(t) for t in op.inputs if t >= 0)
    graph.operators = [graph.operators[i] for i in sorted(kept)]
    graph.outputs = np.array(sorted(levels, key=lambda t: -int(graph.tensors[t].shape[1])), dtype=np.int32)
    inputs, strides = [int(graph.inputs[0])], []
    resize_ops = (schema.BuiltinOperator.RESIZE_NEAREST_NEIGHBOR, schema.BuiltinOperator.RESIZE_BILINEAR)
    for op in graph.operators:
        if code(op) in resize_ops:
            size = int(op.inputs[1])
            out_h = int(graph.tensors[int(op.outputs[0])].shape[1])
            graph.tensors[size].buffer = 0  # no constant: an input set at every call
            inputs.append(size)
            strides.append(input_h // out_h)
        elif code(op) == schema.BuiltinOperator.RESHAPE:
            raise UnsupportedGraph("a reshape with a fixed shape before the head")
    graph.inputs = np.array(inputs, dtype=np.int32)
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), strides, classes


class AnySizeModel:
    """The rewritten model behind a few LiteRT interpreters (one thread each: one process is one core), one per
    recent input shape: re-planning an interpreter for another shape costs 0.3-5 ms, a tenth of a gated camera's
    detection when crops of every size follow each other (measured with 12 gated cameras in one process: 3.3
    re-plannings a frame with one interpreter, 1.9 with eight, 0.2-0.3 with 32, which hold nearly every crop shape
    of the sample video; about 25 MB each: `TC_YOLO_INTERPRETERS`). Not thread-safe: the detector calls it under
    its lock."""

    def __init__(self, path: str, num_threads: int = 1, interpreters: int = INTERPRETERS):
        with open(path, "rb") as f:
            self._content, self._strides, self.classes = _rewrite(f.read())
        self._num_threads = num_threads
        self._max = interpreters
        self._pool: collections.OrderedDict[tuple[int, int], _Runner] = collections.OrderedDict()
        self._bins = np.arange(REG_MAX, dtype=np.float32)
        self.path = path

    def _runner(self, shape: tuple[int, int]) -> _Runner:
        runner = self._pool.pop(shape, None)
        if runner is None:
            if len(self._pool) >= self._max:  # re-plan the smaller of the two least recently used (re-planning
                oldest = list(self._pool)[:2]   # a whole frame's shape costs 5 ms, a crop's 0.3-1 ms)
                runner = self._pool.pop(min(oldest, key=lambda s: s[0] * s[1]))
            else:
                runner = _Runner(self._content, self._strides, self._num_threads)
            runner.reshape(shape)
        self._pool[shape] = runner
        return runner

    def _run(self, image: FloatArray) -> list[FloatArray]:
        h, w = image.shape[1:3]
        return self._runner((h, w)).run(image)

    def predict(self, image: NDArray[np.uint8], imgsz: int, conf: float,
                classes: list[int] | None = None) -> Prediction:
        """Boxes in `image` (BGR), letterboxed to `imgsz` on its longer side (input sides: multiples of 32)."""
        h, w = image.shape[:2]
        scale = imgsz / max(h, w)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        in_w, in_h = math.ceil(new_w / STRIDE) * STRIDE, math.ceil(new_h / STRIDE) * STRIDE
        canvas = np.full((in_h, in_w, 3), PAD_VALUE, dtype=np.uint8)
        canvas[:new_h, :new_w] = image if (new_w, new_h) == (w, h) else \
            cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        blob = np.multiply(cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB), np.float32(1.0 / 255.0), dtype=np.float32)
        found = self._decode(self._run(blob[None]), in_h, conf, classes)
        if not len(found):
            return found
        xyxy = found.xyxy / np.array([new_w / w, new_h / h, new_w / w, new_h / h], dtype=np.float32)
        xyxy[:, [0, 2]] = np.clip(xyxy[:, [0, 2]], 0, w)
        xyxy[:, [1, 3]] = np.clip(xyxy[:, [1, 3]], 0, h)
        return Prediction(xyxy.astype(np.float32), found.conf, found.cls)

    def _decode(self, outputs: list[FloatArray], in_h: int, conf: float, classes: list[int] | None) -> Prediction:
        boxes, scores, labels = [], [], []
        logit_min = math.log(conf / (1.0 - conf))  # sigmoid(x) > conf  <=>  x > logit(conf)
        for out in outputs:
            _, grid_h, grid_w, channels = out.shape
            stride = in_h / grid_h
            cells = out.reshape(-1, channels)
            logits = cells[:, 4 * REG_MAX:]
            if classes is not None:
                logits = logits[:, classes]
            best = logits.argmax(axis=1)
            best_logit = logits[np.arange(len(best)), best]
            sel = np.flatnonzero(best_logit > logit_min)
            if not len(sel):
                continue
            dist = cells[sel, :4 * REG_MAX].reshape(-1, 4, REG_MAX)
            dist = np.exp(dist - dist.max(axis=2, keepdims=True))
            side = (dist / dist.sum(axis=2, keepdims=True)) @ self._bins  # (n, 4): left, top, right, bottom
            gy, gx = np.divmod(sel, grid_w)
            ax, ay = gx + 0.5, gy + 0.5
            boxes.append(np.stack([ax - side[:, 0], ay - side[:, 1], ax + side[:, 2], ay + side[:, 3]], axis=1)
                         * stride)
            scores.append(1.0 / (1.0 + np.exp(-best_logit[sel])))
            labels.append(best[sel] if classes is None else np.asarray(classes)[best[sel]])
        if not boxes:
            return Prediction.empty()
        xyxy = np.concatenate(boxes).astype(np.float32)
        score = np.concatenate(scores).astype(np.float32)
        label = np.concatenate(labels)
        found = Prediction(xyxy, score, label.astype(np.float32))
        return found[nms(found)]


def nms(boxes: Prediction, iou: float = NMS_IOU) -> NDArray[np.int64]:
    """Indexes of the boxes a class-aware non-maximum suppression keeps, most confident first (at most 300)."""
    xywh = np.column_stack([boxes.xyxy[:, :2], boxes.xyxy[:, 2:] - boxes.xyxy[:, :2]])
    keep = np.asarray(cv2.dnn.NMSBoxesBatched(xywh.tolist(), boxes.conf.tolist(), boxes.cls.astype(np.int64).tolist(),
                                              0.0, iou), dtype=np.int64).reshape(-1)
    return keep[np.argsort(-boxes.conf[keep], kind="stable")][:MAX_DET]


def check_against_original(path: str, model: AnySizeModel) -> None:
    """Run the original graph (at its own size) and the rewritten one on the same image: every anchor's box and
    class scores must agree, or :class:`UnsupportedGraph` (a graph whose head is laid out otherwise would
    otherwise give wrong boxes, silently)."""
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

    original = Interpreter(model_path=path, num_threads=1)
    original.allocate_tensors()
    (source,) = original.get_input_details()
    h, w = (int(v) for v in source["shape"][1:3])
    image = np.random.default_rng(0).random((1, h, w, 3), dtype=np.float32)
    original.set_tensor(source["index"], image)
    original.invoke()
    want = original.get_tensor(original.get_output_details()[0]["index"])[0].T  # (anchors, 4 + classes)
    boxes, logits = [], []
    for out in model._run(image):  # levels, finest first: the original's anchor order
        _, grid_h, grid_w, channels = out.shape
        cells = out.reshape(-1, channels)
        dist = np.exp(cells[:, :4 * REG_MAX].reshape(-1, 4, REG_MAX))
        side = (dist / dist.sum(axis=2, keepdims=True)) @ model._bins
        gy, gx = np.divmod(np.arange(len(cells)), grid_w)
        stride = h / grid_h
        centre = np.stack([gx + 0.5 + (side[:, 2] - side[:, 0]) / 2, gy + 0.5 + (side[:, 3] - side[:, 1]) / 2], 1)
        boxes.append(np.concatenate([centre, side[:, :2] + side[:, 2:]], axis=1) * stride / np.array([w, h, w, h]))
        logits.append(cells[:, 4 * REG_MAX:])
    got_boxes, got_scores = np.concatenate(boxes), 1.0 / (1.0 + np.exp(-np.concatenate(logits)))
    if got_boxes.shape != want[:, :4].shape or not np.allclose(got_boxes, want[:, :4], atol=2e-3) \
            or not np.allclose(got_scores, want[:, 4:], rtol=1e-2, atol=1e-4):
        raise UnsupportedGraph("the rewritten graph does not reproduce the original's boxes and scores")


def load(path: str, interpreters: int = INTERPRETERS) -> AnySizeModel | None:
    """The model at any input size, or None (logged) when the file is not a .tflite YOLOv8 detection graph this
    module can rewrite, checked against the original graph; `interpreters`: how many input shapes stay planned."""
    if not path.lower().endswith(".tflite"):
        return None
    try:
        model = AnySizeModel(path, interpreters=interpreters)
        check_against_original(path, model)
        model.predict(np.zeros((64, 96, 3), dtype=np.uint8), 96, 0.5)  # two more shapes: the rewrite resizes
        model.predict(np.zeros((64, 64, 3), dtype=np.uint8), 64, 0.5)
    except (UnsupportedGraph, RuntimeError, ValueError) as exc:
        logger.warning("%s runs at its fixed input size through ultralytics (cannot run it at any size: %s)",
                       path, exc)
        return None
    return model
