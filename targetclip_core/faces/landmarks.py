"""Facial landmarks for FFHQ-style alignment: where the five points come from.

Three sources, one result (pixel coordinates x, y; the centre of the top-left
pixel is (0, 0), the convention of dlib and of the FFHQ alignment script):

- ``"mtcnn"`` (default): MTCNN (Zhang et al. 2016) re-implemented in plain
  PyTorch, running the P/R/O-net weights that ship inside the registry package
  ``facenet-pytorch``.  Only its data files are read (never its code, which
  pins old torch versions); the pipeline follows facenet-pytorch 2.5.3's
  ``detect_face`` step for step, so boxes and points match it.  It gives five
  points: left eye, right eye, nose, mouth left, mouth right ("left" is image
  left: the subject's right).
- ``"dlib:/path/shape_predictor_68_face_landmarks.dat"``: dlib's frontal face
  detector and 68-point predictor, the landmarks FFHQ and e4e were made with;
  needs the ``dlib`` module.
- landmarks given by hand: a [5, 2] or [68, 2] array.

``five_points`` reduces 68 points to the five the FFHQ formula reads (eye
centres = means of the eye contours 36:42 and 42:48, mouth corners 48 and 54).
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import nms

from targetclip_core.errors import CheckpointError, TargetCLIPError
from targetclip_core.formats.npy import read_npy
from targetclip_core.io.images import rgb_array  # re-exported: the detectors' image input
from targetclip_core.io.text import read_json

__all__ = [
    "FACENET_PYTORCH_PIN",
    "FIVE_POINT_NAMES",
    "MTCNN",
    "Face",
    "clear_detector_cache",
    "detect_faces",
    "detect_landmarks",
    "face_landmarks",
    "five_points",
    "load_mtcnn",
    "read_landmarks_file",
    "rgb_array",
]

FIVE_POINT_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
FACENET_PYTORCH_PIN = "facenet-pytorch==2.5.3"  # 2.6 pins torch<2.3; 2.5.3's requirements are loose
SELECTIONS = ("largest", "probability")


@dataclass(frozen=True)
class Face:
    """One detected face: box (x0, y0, x1, y1), detector confidence, landmarks [K, 2] (x, y)."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> float:
        return float((self.box[2] - self.box[0]) * (self.box[3] - self.box[1]))


# --------------------------------------------------------------------------- MTCNN networks


class PNet(nn.Module):
    """Proposal net: fully convolutional face / box-offset map on 12x12 windows, stride 2."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.prelu1(self.conv1(x))
        x = self.prelu2(self.conv2(self.pool1(x)))
        x = self.prelu3(self.conv3(x))
        return self.conv4_2(x), self.conv4_1(x).softmax(dim=1)


def _flatten_caffe(x: torch.Tensor) -> torch.Tensor:
    # the weights come from Caffe, which flattened feature maps in (W, H, C) order
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class RNet(nn.Module):
    """Refinement net on 24x24 crops: face score and box offsets."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(_flatten_caffe(x)))
        return self.dense5_2(x), self.dense5_1(x).softmax(dim=1)


class ONet(nn.Module):
    """Output net on 48x48 crops: face score, box offsets and the five landmarks."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.dense5(_flatten_caffe(x)))
        return self.dense6_2(x), self.dense6_3(x), self.dense6_1(x).softmax(dim=1)


# --------------------------------------------------------------------------- MTCNN pipeline


def _normalize(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - 127.5) * 0.0078125  # the constants MTCNN was trained with


def _resample(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(img, size=size, mode="area")


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Grow each box to a square around its centre (side = the longer side)."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    out = boxes.clone()
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Apply the R/O-net box offsets (fractions of the inclusive box size)."""
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    out = boxes.clone()
    out[:, :4] = boxes[:, :4] + offsets * torch.stack([w, h, w, h], dim=1)
    return out


def _nms_min(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy NMS where overlap = intersection / the smaller area (MTCNN's last stage)."""
    x0, y0, x1, y1 = boxes.T
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    order = np.argsort(scores)
    keep = []
    while order.size:
        i, rest = order[-1], order[:-1]
        keep.append(i)
        iw = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + 1)
        ih = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + 1)
        overlap = iw * ih / np.minimum(area[i], area[rest])
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


class MTCNN(nn.Module):
    """The three MTCNN stages with facenet-pytorch's defaults and arithmetic.

    ``forward`` takes one image as float pixels [1, 3, H, W] in [0, 255] and
    returns boxes [N, 5] (x0, y0, x1, y1, score) and points [N, 5, 2].
    """

    def __init__(self, min_face_size: int = 20, thresholds=(0.6, 0.7, 0.7), factor: float = 0.709):
        super().__init__()
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        self.min_face_size = min_face_size
        self.thresholds = tuple(thresholds)
        self.factor = factor

    def scales(self, height: int, width: int) -> list[float]:
        """Pyramid scales: the smallest face maps to PNet's 12 px window, then shrink by `factor`."""
        scale = 12.0 / self.min_face_size
        side = min(height, width) * scale
        out = []
        while side >= 12:
            out.append(scale)
            scale *= self.factor
            side *= self.factor
        return out

    @torch.no_grad()
    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        empty = img.new_zeros(0, 5), img.new_zeros(0, 5, 2)
        boxes = self._propose(img)
        if len(boxes) == 0:
            return empty
        boxes = self._refine(img, boxes)
        if len(boxes) == 0:
            return empty
        return self._output(img, boxes)

    def _propose(self, img: torch.Tensor) -> torch.Tensor:
        """Stage 1: PNet over the pyramid -> squared candidate boxes [N, 5]."""
        h, w = img.shape[2:]
        candidates = []
        for scale in self.scales(h, w):
            offsets, probs = self.pnet(_normalize(_resample(img, (int(h * scale + 1), int(w * scale + 1)))))
            found = self._window_boxes(offsets[0], probs[0, 1], scale)
            candidates.append(found[nms(found[:, :4], found[:, 4], 0.5)])
        boxes = torch.cat(candidates)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
        # PNet offsets are fractions of the exclusive box size, unlike the later stages
        w_box = boxes[:, 2] - boxes[:, 0]
        h_box = boxes[:, 3] - boxes[:, 1]
        scale4 = torch.stack([w_box, h_box, w_box, h_box], dim=1)
        moved = boxes[:, :4] + boxes[:, 5:9] * scale4
        return _square(torch.cat([moved, boxes[:, 4:5]], dim=1))

    def _window_boxes(self, offsets: torch.Tensor, prob: torch.Tensor, scale: float) -> torch.Tensor:
        """PNet map cells above threshold -> [N, 9] boxes in image pixels + score + offsets."""
        stride, cell = 2, 12
        rows, cols = torch.nonzero(prob >= self.thresholds[0], as_tuple=True)
        xy = torch.stack([cols, rows], dim=1).to(offsets.dtype)
        top_left = ((stride * xy + 1) / scale).floor()
        bottom_right = ((stride * xy + cell) / scale).floor()
        return torch.cat(
            [top_left, bottom_right, prob[rows, cols, None], offsets[:, rows, cols].T], dim=1
        )

    def _crops(self, img: torch.Tensor, boxes: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Cut each box (clipped to the image, as facenet-pytorch does) and resample to size x size."""
        h, w = img.shape[2:]
        ints = boxes[:, :4].trunc().int().tolist()
        crops, kept = [], []
        for k, (x0, y0, x1, y1) in enumerate(ints):
            x0, y0, x1, y1 = max(x0, 1), max(y0, 1), min(x1, w), min(y1, h)
            if y1 > y0 - 1 and x1 > x0 - 1:  # MATLAB-style 1-based boxes: column x0 is index x0 - 1
                crops.append(_resample(img[:, :, y0 - 1 : y1, x0 - 1 : x1], (size, size)))
                kept.append(k)
        if not crops:
            return img.new_zeros(0, 3, size, size), torch.zeros(0, dtype=torch.long)
        return _normalize(torch.cat(crops)), torch.tensor(kept, dtype=torch.long)

    def _refine(self, img: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Stage 2: RNet rescoring, NMS and box regression."""
        crops, kept = self._crops(img, boxes, 24)
        boxes = boxes[kept]
        offsets, probs = self.rnet(crops) if len(crops) else (crops.new_zeros(0, 4), crops.new_zeros(0, 2))
        passed = probs[:, 1] > self.thresholds[1]
        boxes = torch.cat([boxes[passed, :4], probs[passed, 1:2]], dim=1)
        pick = nms(boxes[:, :4], boxes[:, 4], 0.7)
        return _square(_regress(boxes[pick], offsets[passed][pick]))

    def _output(self, img: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 3: ONet rescoring, landmarks, box regression, NMS by the smaller area."""
        crops, kept = self._crops(img, boxes, 48)
        boxes = boxes[kept]
        if len(crops) == 0:
            return img.new_zeros(0, 5), img.new_zeros(0, 5, 2)
        offsets, points, probs = self.onet(crops)
        passed = probs[:, 1] > self.thresholds[2]
        boxes = torch.cat([boxes[passed, :4], probs[passed, 1:2]], dim=1)
        points = points[passed]
        # landmarks are fractions of the inclusive box before regression, in 1-based pixels
        w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        xs = w * points[:, :5] + boxes[:, 0:1] - 1
        ys = h * points[:, 5:] + boxes[:, 1:2] - 1
        points = torch.stack([xs, ys], dim=2)
        boxes = _regress(boxes, offsets[passed])
        pick = torch.from_numpy(_nms_min(boxes[:, :4].cpu().numpy(), boxes[:, 4].cpu().numpy(), 0.7))
        return boxes[pick.to(boxes.device)], points[pick.to(boxes.device)]


# --------------------------------------------------------------------------- weights


def facenet_pytorch_data_dir() -> Path:
    """The `data/` folder of the installed facenet-pytorch package, found without importing it."""
    try:
        spec = importlib.util.find_spec("facenet_pytorch")
    except (ImportError, ValueError):  # a broken or shadowed install counts as missing
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            "the MTCNN face detector reads its weights from the facenet-pytorch package, which is not "
            f'installed: pip install "{FACENET_PYTORCH_PIN}" (or give the landmarks by hand)'
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _load_state(module: nn.Module, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: MTCNN weights missing from the facenet-pytorch install; reinstall "
            f'"{FACENET_PYTORCH_PIN}"'
        ) from None
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as e:  # corrupt or unsafe
        raise CheckpointError(f"{path}: not a readable MTCNN state dict ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    try:
        module.load_state_dict({k: v.float() for k, v in state.items()})
    except (RuntimeError, AttributeError) as e:
        raise CheckpointError(f"{path}: keys or shapes do not fit MTCNN ({e})") from None


_MTCNN_CACHE: dict[str, MTCNN] = {}
_CACHE_LOCK = threading.Lock()


def load_mtcnn(device: str | torch.device | None = None) -> MTCNN:
    """The MTCNN detector with facenet-pytorch's weights, cached per device."""
    device = torch.device(device or "cpu")
    key = str(device)
    with _CACHE_LOCK:
        if key not in _MTCNN_CACHE:
            model = MTCNN()
            data = facenet_pytorch_data_dir()
            for net, file in ((model.pnet, "pnet.pt"), (model.rnet, "rnet.pt"), (model.onet, "onet.pt")):
                _load_state(net, data / file)
            _MTCNN_CACHE[key] = model.eval().requires_grad_(False).to(device)
        return _MTCNN_CACHE[key]


def clear_detector_cache() -> None:
    """Forget the loaded detectors (MTCNN per device, dlib models per file)."""
    with _CACHE_LOCK:
        _MTCNN_CACHE.clear()
        _DLIB_CACHE.clear()


# --------------------------------------------------------------------------- dlib


_DLIB_CACHE: dict[str, tuple[object, object]] = {}


def _dlib_models(path: Path):
    if not path.is_file():
        raise TargetCLIPError(f"{path}: dlib shape predictor file not found")
    try:
        import dlib
    except ImportError:
        raise TargetCLIPError(
            f"{path}: the 68-point predictor needs the dlib module, which is not installed "
            "(pip install dlib builds it from source: CMake and a C++ compiler are required); "
            "use detector='mtcnn' instead, or give the landmarks by hand"
        ) from None
    key = str(path.resolve())
    with _CACHE_LOCK:
        if key not in _DLIB_CACHE:
            try:
                predictor = dlib.shape_predictor(str(path))
            except RuntimeError as e:
                raise CheckpointError(f"{path}: not a dlib shape predictor ({e})") from None
            _DLIB_CACHE[key] = (dlib.get_frontal_face_detector(), predictor)
        return _DLIB_CACHE[key]


def _detect_dlib(rgb: np.ndarray, path: Path) -> list[Face]:
    detector, predictor = _dlib_models(path)
    faces = []
    for rect in detector(rgb, 1):  # upsample once, as FFHQ's and e4e's scripts do
        shape = predictor(rgb, rect)
        points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)
        box = np.array([rect.left(), rect.top(), rect.right(), rect.bottom()], dtype=np.float32)
        faces.append(Face(box=box, score=1.0, landmarks=points))
    return faces


# --------------------------------------------------------------------------- public API


def _detect_mtcnn(rgb: np.ndarray, device) -> list[Face]:
    model = load_mtcnn(device)
    device = next(model.parameters()).device
    pixels = torch.from_numpy(np.ascontiguousarray(rgb) if rgb.flags.writeable else rgb.copy()).to(device).permute(2, 0, 1)[None].float()
    boxes, points = model(pixels)
    boxes, points = boxes.cpu().numpy(), points.cpu().numpy()
    return [Face(box=b[:4].copy(), score=float(b[4]), landmarks=p.copy()) for b, p in zip(boxes, points)]


def _order(faces: list[Face], select: str) -> list[Face]:
    if select == "largest":
        return sorted(faces, key=lambda f: -f.area)
    return sorted(faces, key=lambda f: -f.score)


def _detect(image, detector, select, device, name) -> tuple[list[Face], str]:
    if select not in SELECTIONS:
        raise TargetCLIPError(f"select must be one of {', '.join(SELECTIONS)}, got {select!r}")
    rgb, name = rgb_array(image, name)
    if min(rgb.shape[:2]) < 12:
        return [], name  # smaller than the smallest window any of the detectors looks at
    if detector == "mtcnn":
        faces = _detect_mtcnn(rgb, device)
    elif isinstance(detector, str) and detector.startswith("dlib:"):
        faces = _detect_dlib(rgb, Path(detector[len("dlib:") :]).expanduser())
    else:
        raise TargetCLIPError(f"unknown landmark detector {detector!r}: use 'mtcnn' or 'dlib:/path/to/predictor.dat'")
    return _order(faces, select), name


def detect_faces(
    image, detector: str = "mtcnn", select: str = "largest", device=None, name: str | None = None
) -> list[Face]:
    """All faces in an image, best first (``select``: "largest" box or highest "probability").

    ``image`` is a path, a PIL image, a [1, 3, H, W] tensor in [-1, 1] or a uint8
    [H, W, 3] array; ``detector`` is "mtcnn" or "dlib:/path/to/shape_predictor_68_face_landmarks.dat".
    Returns an empty list when there is no face.
    """
    return _detect(image, detector, select, device, name)[0]


def detect_landmarks(
    image, detector: str = "mtcnn", select: str = "largest", device=None, name: str | None = None
) -> np.ndarray:
    """Landmarks of every face, best first: float32 [K, 5, 2] (MTCNN) or [K, 68, 2] (dlib).

    Raises TargetCLIPError naming the image when no face is found.
    """
    faces, name = _detect(image, detector, select, device, name)
    if not faces:
        raise TargetCLIPError(
            f"no face found in {name} (detector {detector}); try a larger, frontal, well-lit face "
            "or give the landmarks by hand"
        )
    return np.stack([f.landmarks for f in faces]).astype(np.float32)


def face_landmarks(
    image, landmarks=None, detector: str = "mtcnn", select: str = "largest", device=None, name: str | None = None
) -> np.ndarray:
    """The five alignment points [5, 2] of one face: the given landmarks, or the best detected face."""
    if landmarks is not None:
        return five_points(landmarks, name)
    return five_points(detect_landmarks(image, detector, select, device, name)[0], name)


def five_points(landmarks, name: str | None = None) -> np.ndarray:
    """[5, 2] or [68, 2] landmarks (pixels, x, y) -> the five points, float64 [5, 2] (geometry, not a model).

    From the 68-point (iBUG / dlib) layout the eyes are the centres of the eye
    contours and the mouth corners points 48 and 54, exactly what FFHQ used; the
    nose is the tip (30), which the alignment does not read.
    """
    what = f"landmarks for {name}" if name else "landmarks"
    try:
        lm = np.asarray(landmarks.detach().cpu() if torch.is_tensor(landmarks) else landmarks, dtype=np.float64)
    except (TypeError, ValueError):
        raise TargetCLIPError(f"{what}: expected a [5, 2] or [68, 2] array of x, y pixel positions") from None
    if lm.ndim != 2 or lm.shape not in ((5, 2), (68, 2)):
        raise TargetCLIPError(f"{what}: expected shape [5, 2] or [68, 2], got {list(lm.shape)}")
    if not np.isfinite(lm).all():
        raise TargetCLIPError(f"{what}: contain NaN or infinite values")
    if lm.shape[0] == 68:
        lm = np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])
    eye_distance = np.hypot(*(lm[1] - lm[0]))
    mouth_height = np.hypot(*((lm[3] + lm[4]) / 2 - (lm[0] + lm[1]) / 2))
    if max(eye_distance, mouth_height) < 1.0:
        raise TargetCLIPError(f"{what}: eyes and mouth coincide; the points do not describe a face")
    return lm


# --------------------------------------------------------------------------- landmark files

LANDMARK_SHAPES = ((5, 2), (68, 2))
MAX_LANDMARK_JSON_BYTES = 1 << 20  # [68, 2] pixel pairs are under 4 KB of JSON


def read_landmarks_file(path: str | os.PathLike) -> np.ndarray:
    """Landmarks given by hand in a file: float64 [5, 2] or [68, 2] (x, y pixels), finite.

    ``.npy``: a numeric array; the shape and dtype its header declares are checked before any data is
    read, and Python objects (pickles) are refused, never loaded.  Anything else is JSON (UTF-8, strict,
    at most 1 MiB): an array of [x, y] number pairs.  Every problem raises TargetCLIPError naming the file.
    """
    p = Path(path)
    lm = _read_npy_landmarks(p) if p.suffix.lower() == ".npy" else _json_landmarks(p)
    if lm.shape not in LANDMARK_SHAPES:
        raise _shape_error(p, lm.shape)
    if not np.isfinite(lm).all():
        raise TargetCLIPError(f"{p}: the landmarks contain NaN or infinite values")
    return lm


def _shape_error(p: Path, shape) -> TargetCLIPError:
    return TargetCLIPError(f"{p}: landmarks must have shape [5, 2] or [68, 2] (x, y pixels), got {list(shape)}")


def _read_npy_landmarks(p: Path) -> np.ndarray:
    def shape_problem(shape):
        return None if shape in LANDMARK_SHAPES else _shape_error(p, shape).args[0].split(": ", 1)[1]

    return read_npy(p, "landmarks file", check_shape=shape_problem, kinds="iuf").astype(np.float64)


def _json_landmarks(p: Path) -> np.ndarray:
    value = read_json(p, "landmarks file", MAX_LANDMARK_JSON_BYTES)
    if not (isinstance(value, list) and all(isinstance(pt, list) and len(pt) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in pt) for pt in value)):
        raise TargetCLIPError(f"{p}: the landmarks file must hold a JSON array of [x, y] number pairs")
    try:
        return np.array(value, dtype=np.float64).reshape(len(value), 2)
    except OverflowError:  # an integer too large for a float
        raise TargetCLIPError(f"{p}: the landmarks contain a number too large to be a pixel position") from None
