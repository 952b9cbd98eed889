"""The tile transforms of Winograd's F(4x4, 3x3) (models/fast/winograd.py's WinogradConv2d), compiled by numba.

The transforms are a few additions per value, so in PyTorch operations their cost is memory traffic (padding,
gathering the overlapping 6x6 tiles, two small matrix products each way). Here each tile is read once,
transformed in registers and written once (`tiles_in`), and each output tile is assembled with the bias straight
into the NHWC output (`tiles_out`).

Tiles are numbered (b * rows + r) * cols + c; tile (b, r, c) reads input rows 4r - 1 .. 4r + 4 and columns
4c - 1 .. 4c + 4 (zero outside: the convolution's padding of 1) and makes output rows 4r .. 4r + 3, columns
4c .. 4c + 3. Transformed position (column j, row i) is j * 6 + i, as the kernel transform in WinogradConv2d.
Each function does tiles first .. last - 1, so that callers can split the tiles between threads (the functions
release the GIL). Compiled on first use and cached next to this file (numba's cache=True).
"""
import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def tiles_in(x, out, rows, cols, first, last):
    """out (36, tiles, C)[j * 6 + i, tile] = (B^T d B)[i, j] of the 6x6 window d of x (batch, H, W, C)."""
    _, height, width, channels = x.shape
    zero = np.zeros(channels, x.dtype)
    rows_done = np.empty((6, 6, channels), x.dtype)  # [i, column l]: B^T over the window's rows
    for tile in range(first, last):
        b, rest = divmod(tile, rows * cols)
        r, c = divmod(rest, cols)
        top = 4 * r - 1
        for l in range(6):
            column = 4 * c - 1 + l
            inside = 0 <= column < width
            d0 = x[b, top, column] if inside and top >= 0 else zero
            d1 = x[b, top + 1, column] if inside and top + 1 < height else zero
            d2 = x[b, top + 2, column] if inside and top + 2 < height else zero
            d3 = x[b, top + 3, column] if inside and top + 3 < height else zero
            d4 = x[b, top + 4, column] if inside and top + 4 < height else zero
            d5 = x[b, top + 5, column] if inside and top + 5 < height else zero
            for ch in range(channels):
                a0, a1, a2, a3, a4, a5 = d0[ch], d1[ch], d2[ch], d3[ch], d4[ch], d5[ch]
                rows_done[0, l, ch] = 4 * a0 - 5 * a2 + a4
                rows_done[1, l, ch] = -4 * (a1 + a2) + a3 + a4
                rows_done[2, l, ch] = 4 * (a1 - a2) - a3 + a4
                rows_done[3, l, ch] = 2 * (a3 - a1) - a2 + a4
                rows_done[4, l, ch] = 2 * (a1 - a3) - a2 + a4
                rows_done[5, l, ch] = 4 * a1 - 5 * a3 + a5
        for i in range(6):
            o0, o1, o2 = out[i, tile], out[6 + i, tile], out[12 + i, tile]
            o3, o4, o5 = out[18 + i, tile], out[24 + i, tile], out[30 + i, tile]
            for ch in range(channels):
                a0, a1, a2 = rows_done[i, 0, ch], rows_done[i, 1, ch], rows_done[i, 2, ch]
                a3, a4, a5 = rows_done[i, 3, ch], rows_done[i, 4, ch], rows_done[i, 5, ch]
                o0[ch] = 4 * a0 - 5 * a2 + a4
                o1[ch] = -4 * (a1 + a2) + a3 + a4
                o2[ch] = 4 * (a1 - a2) - a3 + a4
                o3[ch] = 2 * (a3 - a1) - a2 + a4
                o4[ch] = 2 * (a1 - a3) - a2 + a4
                o5[ch] = 4 * a1 - 5 * a3 + a5


@numba.njit(nogil=True, cache=True)
def tiles_out(sums, bias, out, rows, cols, first, last):
    """out (batch, H, W, C)[b, 4r + a, 4c + e] = bias + (A^T S A)[a, e] of the tile's 36 channel sums
    S = sums (36, tiles, C)[:, tile], for the output pixels inside out."""
    _, height, width, channels = out.shape
    columns_done = np.empty((4, 6, channels), out.dtype)  # [a, j]: A^T over the rows i of position (j, i)
    for tile in range(first, last):
        b, rest = divmod(tile, rows * cols)
        r, c = divmod(rest, cols)
        for j in range(6):
            s0, s1, s2 = sums[j * 6, tile], sums[j * 6 + 1, tile], sums[j * 6 + 2, tile]
            s3, s4, s5 = sums[j * 6 + 3, tile], sums[j * 6 + 4, tile], sums[j * 6 + 5, tile]
            for ch in range(channels):
                plus, plus2 = s1[ch] + s2[ch], s3[ch] + s4[ch]
                minus, minus2 = s1[ch] - s2[ch], s3[ch] - s4[ch]
                columns_done[0, j, ch] = s0[ch] + plus + plus2
                columns_done[1, j, ch] = minus + 2 * minus2
                columns_done[2, j, ch] = plus + 4 * plus2
                columns_done[3, j, ch] = minus + 8 * minus2 + s5[ch]
        left = 4 * c
        count = min(4, width - left)  # output columns of this tile inside out
        for a in range(min(4, height - 4 * r)):
            y = 4 * r + a
            o0, o1 = out[b, y, left], out[b, y, left + min(1, count - 1)]
            o2, o3 = out[b, y, left + min(2, count - 1)], out[b, y, left + min(3, count - 1)]
            for ch in range(channels):
                a0, a1, a2 = columns_done[a, 0, ch], columns_done[a, 1, ch], columns_done[a, 2, ch]
                a3, a4, a5 = columns_done[a, 3, ch], columns_done[a, 4, ch], columns_done[a, 5, ch]
                plus, plus2 = a1 + a2, a3 + a4
                minus, minus2 = a1 - a2, a3 - a4
                # right to left: in a tile cut by the edge, the views past it alias the last column inside
                o3[ch] = bias[ch] + minus + 8 * minus2 + a5
                o2[ch] = bias[ch] + plus + 4 * plus2
                o1[ch] = bias[ch] + minus + 2 * minus2
                o0[ch] = bias[ch] + a0 + plus + plus2
