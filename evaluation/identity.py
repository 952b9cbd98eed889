"""Identity similarity: does the dubbed face still look like the person? The cosine of face-recognition embeddings
(models/face_recognition.py, ArcFace's iresnet) of the same frame before and after, each face aligned by its own
landmarks to ArcFace's 5-point template as insightface aligns faces for that network."""
import cv2
import numpy as np
import torch
import torch.nn.functional as F

from models.face_recognition import FACE_SIDE

# insightface's `arcface_dst`: eye centres, nose tip and mouth corners of a 112x112 aligned face
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                             [70.7299, 92.2041]], np.float64)


def five_points(landmarks):
    """(68, 2) iBUG landmarks -> (5, 2): ArcFace's eye centres, nose tip (30) and mouth corners (48, 54)."""
    return np.stack([landmarks[36:42].mean(axis=0), landmarks[42:48].mean(axis=0), landmarks[30], landmarks[48],
                     landmarks[54]]).astype(np.float64)


def similarity_transform(source, target):
    """The 2x3 rotation, uniform scale and translation taking points `source` (N, 2) nearest to `target` in the
    least-squares sense (Umeyama, as scikit-image's SimilarityTransform that insightface uses)."""
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    s, t = source - source_mean, target - target_mean
    u, singular, vt = np.linalg.svd(t.T @ s / len(source))
    sign = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(singular) @ sign) / s.var(axis=0).sum()
    return np.hstack([scale * rotation, (target_mean - scale * rotation @ source_mean)[:, None]])


def aligned_face(frame, landmarks):
    """(112, 112, 3) RGB: the face of an RGB frame, aligned to ArcFace's template by its 68 landmarks."""
    matrix = similarity_transform(five_points(landmarks), ARCFACE_TEMPLATE)
    return cv2.warpAffine(frame, matrix, (FACE_SIDE, FACE_SIDE), borderValue=0)


def embeddings(network, faces, batch=32):
    """(N, 112, 112, 3) uint8 RGB aligned faces -> (N, D) unit-length embeddings."""
    device = next(network.parameters()).device
    codes = []
    with torch.no_grad():
        for start in range(0, len(faces), batch):
            chunk = torch.from_numpy(np.ascontiguousarray(faces[start:start + batch])).to(device)
            chunk = chunk.permute(0, 3, 1, 2).float() / 127.5 - 1  # arcface_torch's (x / 255 - 0.5) / 0.5
            codes.append(F.normalize(network(chunk).float(), dim=1).cpu())
    return torch.cat(codes)


def identity_similarity(generated, real):
    """Mean cosine of paired unit embeddings (N, D): 1 for the same face."""
    return float((generated * real).sum(dim=1).mean())
