"""Pasting a generated face back into a 4:2:0 frame (media/yuv.py), in the rows it covers and nowhere else."""
import cv2
import numpy as np

GREY = 2  # chroma levels off neutral within which a face is black and white (colour faces measured reach 36 and 49)


def _block_means(image):
    """The mean of each 2x2 block of an (h, w[, c]) float image of even size: OpenCV's area halving is that, and
    much faster than numpy's mean over reshaped axes."""
    height, width = image.shape[:2]
    return cv2.resize(image, (width // 2, height // 2), interpolation=cv2.INTER_AREA)


class FaceBlender:
    """Blends generated faces into 4:2:0 rows with a weight mask (`paste_mask`, the crop's size): luma per
    pixel, chroma per 2x2 block as the mean of the 4:4:4 blend over it (the blend in RGB followed by 4:2:0
    averaging), so the face meets the untouched frame without a seam."""

    def __init__(self, mask, colour):
        self.mask, self.colour = mask, colour
        self.layouts = {}

    def _layout(self, size, top, left):
        """For a box of `size` (w, h) at (top, left): the support of the weight (where it moves a pixel by a
        hundredth of a level or more) grown to even frame rows and columns, and the weights on it."""
        key = (size, top % 2, left % 2)
        if key not in self.layouts:
            width, height = size
            weight = cv2.resize(self.mask, size)
            ys, xs = np.nonzero(weight > 1e-3)
            y0, y1 = ys.min() - (top + ys.min()) % 2, ys.max() + 1 + (top + ys.max() + 1) % 2
            x0, x1 = xs.min() - (left + xs.min()) % 2, xs.max() + 1 + (left + xs.max() + 1) % 2
            y0, x0 = y0 + 2 * (y0 < 0), x0 + 2 * (x0 < 0)  # stay inside the box (the mask fades well before it)
            y1, x1 = y1 - 2 * (y1 > height), x1 - 2 * (x1 > width)
            weight = np.ascontiguousarray(weight[y0:y1, x0:x1])
            self.layouts[key] = (slice(y0, y1), slice(x0, x1), weight, _block_means(weight))
        return self.layouts[key]

    def paste(self, rows, face, box, strength=1.0):
        """Blend `face` ((h, w, 3) float RGB, the crop's size) into `rows` = (Y rows top:bottom, U rows, V rows
        top/2:bottom/2, copies that the caller owns) over columns left:right of the box (top, bottom, left, right),
        the mask's weights times `strength` (below 1 while the dubbed mouth fades in or out)."""
        top, bottom, left, right = box
        size = (right - left, bottom - top)
        support_rows, support_cols, weight, block_weight = self._layout(size, top, left)
        if strength < 1:
            weight, block_weight = weight * strength, block_weight * strength
        resized = cv2.resize(face, size)[support_rows, support_cols]
        yuv = cv2.transform(np.ascontiguousarray(resized, dtype=np.float32), self.colour.from_rgb)  # (h, w, 3)
        y, u, v = rows
        columns = slice(left + support_cols.start, left + support_cols.stop)
        region = y[support_rows, columns]
        blended = region.astype(np.float32)
        blended += weight * (yuv[..., 0] - blended)
        region[...] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
        chroma_rows = slice((top % 2 + support_rows.start) // 2, (top % 2 + support_rows.stop) // 2)
        chroma_cols = slice((left + support_cols.start) // 2, (left + support_cols.stop) // 2)
        if all(np.abs(plane[chroma_rows, chroma_cols].astype(np.int16) - 128).max() <= GREY for plane in (u, v)):
            return  # black and white footage: the generator draws in colour, the frame keeps none
        weighted = _block_means(weight[..., None] * yuv[..., 1:])                          # (h/2, w/2, 2)
        for plane, channel in ((u, 0), (v, 1)):
            region = plane[chroma_rows, chroma_cols]
            blended = region * (1 - block_weight) + weighted[..., channel]
            region[...] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
